#!/usr/bin/env bash
# ICPO with verl's multi-turn GRPO: the policy talks with the simulated user of a sharded
# conversation (icpo_eval.verl_interaction.IcpoInteraction), every reply judged with the ICPO
# turn reward, the trajectory paid the mean of its turn rewards. For verl 0.7.1 on a Ray cluster.
# UNTESTED END TO END: written against verl 0.7.1's config and source, never run on GPUs here.
#
#   icpo-eval export RUN --format verl --multi-turn -o DATA
#   DATA=DATA MODEL=/path/to/Qwen2.5-1.5B-Instruct bash train/verl/run_icpo_multiturn.sh [k=v ...]
#
# The GRPO settings are train/paper-qwen2.5-1.5b.yaml's where they map: G=8, 64 prompts a step,
# one optimizer step per batch, lr 1e-6 constant, 600 steps, token-mean loss, clip 0.2, KL loss
# low_var_kl 0.001, temperature 1. Sized for 8 GPUs a node; NNODES nodes.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
: "${DATA:?set DATA to the directory of icpo-eval export --format verl --multi-turn}"
MODEL="${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}"
NNODES="${NNODES:-1}"
GPUS="${GPUS:-8}"
VI=$(python -c 'import icpo_eval.verl_interaction as m; print(m.__file__)')
VR=$(python -c 'import icpo_eval.verl_reward as m; print(m.__file__)')

python -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    algorithm.use_kl_in_reward=False \
    data.train_files="$DATA/train.parquet" \
    data.val_files="$DATA/train.parquet" \
    data.train_batch_size=64 \
    data.max_prompt_length=2048 \
    data.max_response_length=4096 \
    data.filter_overlong_prompts=True \
    data.return_raw_chat=True \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.model.enable_gradient_checkpointing=True \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_epochs=1 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    actor_rollout_ref.actor.clip_ratio=0.2 \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.actor.use_kl_loss=True \
    actor_rollout_ref.actor.kl_loss_coef=0.001 \
    actor_rollout_ref.actor.kl_loss_type=low_var_kl \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=8 \
    actor_rollout_ref.rollout.temperature=1.0 \
    actor_rollout_ref.rollout.top_p=1.0 \
    actor_rollout_ref.rollout.top_k=-1 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.rollout.agent.default_agent_loop=tool_agent \
    actor_rollout_ref.rollout.multi_turn.enable=True \
    actor_rollout_ref.rollout.multi_turn.interaction_config_path="$HERE/interaction.yaml" \
    actor_rollout_ref.rollout.multi_turn.max_assistant_turns=null \
    actor_rollout_ref.rollout.multi_turn.max_user_turns=null \
    reward.custom_reward_function.path="$VI" \
    reward.custom_reward_function.name=compute_score \
    reward.reward_manager.source=importlib \
    reward.reward_manager.name=IcpoRewardManager \
    reward.reward_manager.module.path="$VR" \
    trainer.total_training_steps=600 \
    trainer.save_freq=100 \
    trainer.test_freq=-1 \
    trainer.val_before_train=False \
    trainer.logger='[console]' \
    trainer.project_name=icpo \
    trainer.experiment_name=qwen2.5-1.5b-multiturn \
    trainer.n_gpus_per_node="$GPUS" \
    trainer.nnodes="$NNODES" \
    "$@"

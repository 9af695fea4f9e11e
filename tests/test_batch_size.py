"""``--batch-size auto``: what the local backend picks on a CPU and on a GPU, what the command
line accepts, and that the runner's rounds take the backend's choice."""

import json

import pytest

from icpo_eval.cli import build_parser
from icpo_eval.models.local.backend import (
    CPU_AUTO_BATCH,
    GPU_AUTO_BATCH,
    GPU_AUTO_CONTEXT,
    auto_batch_size,
    kv_bytes_per_position,
)
from icpo_eval.records import RunSpec
from icpo_eval.runner import DEFAULT_ROUND_BATCH, batch_of, run
from icpo_eval.tasksets import write_jsonl
from tests.conftest import ScriptedBackend, make_math

GiB = 2**30
#: Qwen2.5-1.5B in bf16: 28 layers, 2 key/value heads of 128 (1536 / 12), 2 bytes.
QWEN_1_5B = 2 * 28 * 2 * 128 * 2


def test_cpu_gets_the_measured_size():
    assert auto_batch_size("cpu", QWEN_1_5B, None) == (CPU_AUTO_BATCH, "CPU")
    assert auto_batch_size("cpu", QWEN_1_5B, 100 * GiB)[0] == CPU_AUTO_BATCH


def test_gpu_size_follows_free_memory_within_bounds():
    lo, hi = GPU_AUTO_BATCH
    row = QWEN_1_5B * GPU_AUTO_CONTEXT  # 112 MiB of keys and values a row
    # 4 GiB free: half of it holds 18 rows.
    size, why = auto_batch_size("cuda", QWEN_1_5B, 4 * GiB)
    assert size == (2 * GiB) // row == 18
    assert "4.0 GiB free" in why and "112 MiB" in why
    assert auto_batch_size("cuda:0", QWEN_1_5B, 130 * GiB)[0] == hi  # an H200: capped
    assert auto_batch_size("cuda", QWEN_1_5B, 1 * GiB)[0] == lo  # too little: the floor
    assert auto_batch_size("cuda", QWEN_1_5B, None) == (lo, "GPU, free memory unknown")
    assert auto_batch_size("cuda", 0, 4 * GiB)[0] == lo  # a config that names no layers


def test_key_value_bytes_count_grouped_heads():
    transformers = pytest.importorskip("transformers")
    llama = transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2
    )
    assert kv_bytes_per_position(llama, 4) == 2 * 2 * 2 * 8 * 4
    qwen = transformers.Qwen2Config(
        num_hidden_layers=28, hidden_size=1536, num_attention_heads=12, num_key_value_heads=2
    )
    assert kv_bytes_per_position(qwen, 2) == QWEN_1_5B
    # head_dim given explicitly wins over hidden_size / heads; no key/value heads: all heads.
    explicit = transformers.LlamaConfig(
        num_hidden_layers=1, hidden_size=64, num_attention_heads=4, head_dim=32
    )
    assert kv_bytes_per_position(explicit, 2) == 2 * 1 * 4 * 32 * 2


def test_the_command_line_takes_auto_or_a_positive_integer(capsys):
    run_args = ["run", "--model", "local/smollm2"]
    parser = build_parser()
    assert parser.parse_args(run_args).batch_size is None  # the default is auto
    assert parser.parse_args([*run_args, "--batch-size", "AUTO"]).batch_size is None
    assert parser.parse_args([*run_args, "--batch-size", "48"]).batch_size == 48
    for bad in ("0", "-3", "many"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*run_args, "--batch-size", bad])
        assert exc.value.code == 2
        assert "--batch-size" in capsys.readouterr().err


def test_rounds_take_the_backends_choice_when_auto(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    write_jsonl([make_math(f"t{i}") for i in range(7)], tasks)

    def spec(out, batch_size):
        return RunSpec(
            model="scripted",
            tasks=str(tasks),
            modes=["full"],
            out=str(tmp_path / out),
            batch_size=batch_size,
        )

    backend = ScriptedBackend(lambda m: "Answer: 8")
    backend.batch_size = 3  # what a local backend picked under auto
    run(spec("auto", None), backend=backend, progress=False)
    assert backend.calls == [3, 3, 1]
    assert json.loads((tmp_path / "auto" / "run.json").read_text())["batch_size"] is None

    given = ScriptedBackend(lambda m: "Answer: 8")
    given.batch_size = 3
    run(spec("given", 5), backend=given, progress=False)  # --batch-size wins
    assert given.calls == [5, 2]

    plain = ScriptedBackend(lambda m: "Answer: 8")  # no size of its own (an API backend)
    assert batch_of(spec("x", None), plain) == DEFAULT_ROUND_BATCH


def test_a_local_backend_under_auto_says_what_it_picked():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from icpo_eval.models.local import LocalBackend, smollm2_checkpoint

    path = smollm2_checkpoint()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    config = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=len(tokenizer),
    )
    model = transformers.LlamaForCausalLM(config).eval()
    backend = LocalBackend.from_model("tiny", model, tokenizer, batch_size=None)
    assert backend.batch_size == CPU_AUTO_BATCH
    assert backend.batch_note == f"batch size {CPU_AUTO_BATCH} (auto: CPU)"
    assert LocalBackend.from_model("tiny", model, tokenizer, batch_size=7).batch_size == 7

"""benchmarks/gpu_check.py on a CPU with --tiny: both parts run and report what they measured."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from icpo_eval.testing.scripts import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def report(gpu_check: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    out = tmp_path_factory.mktemp("gpucheck")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from more, and a busy machine costs
    try:
        result = gpu_check.run_check(gpu_check.parse_args(["--tiny", "--out", str(out)]))
    finally:
        torch.set_num_threads(threads)
    result["_out"] = out
    return result


def test_the_engine_part_times_continuous_batching_against_raw_generate(report):
    engine = report["engine"]
    continuous, raw = engine["rows"]
    for row in (continuous, raw):
        assert row["tokens"] > 0 and row["tokens_per_s"] > 0
        assert "peak_gpu_mb" in row  # None off a GPU
    assert continuous["turns"] > continuous["conversations"]  # sharded: several turns each
    assert continuous["tokens_per_turn"] == engine["max_new_tokens"]  # random weights never stop
    assert continuous["kv_pool_peak_mb"] > 0  # the CPU's memory figure: the pool's peak
    assert raw["tokens"] == engine["batch"] * engine["max_new_tokens"]
    assert engine["efficiency"] == pytest.approx(continuous["tokens_per_s"] / raw["tokens_per_s"])
    assert engine["auto_batch_size"] == 32 and "CPU" in engine["auto_batch_note"]


def test_the_rollout_part_trains_the_sampled_tokens_only(report):
    rollout = report["rollout"]
    assert len(rollout["steps"]) == 2 and rollout["mean_of"] == [2]
    for step in rollout["steps"]:
        assert step["conversations"] == rollout["generations"] * rollout["groups"]
        assert step["turns"] > step["conversations"]
        assert step["trained_tokens"] == step["sampled_tokens"] > 0
        assert step["sequence_tokens"] > step["trained_tokens"]  # prompts and user turns too
        assert step["rollout_s"] > 0 and step["update_s"] > 0
        assert step["step_s"] == pytest.approx(step["rollout_s"] + step["update_s"])
        assert "peak_gpu_mb" in step and "rollout_peak_gpu_mb" in step
    assert rollout["env_mask_ok"]
    assert rollout["parameters_changed_share"] > 0  # the update moved the weights (fp32 here)
    assert rollout["mean"]["step_s"] == rollout["steps"][1]["step_s"]
    assert "peak_gpu_mb" in rollout["mean"]
    ref = rollout["cpu_reference"]
    assert ref["steps"] > ref["sharded_steps"] > 0 and "2 CPU cores" in ref["note"]
    assert ref["mean_sharded_step_seconds"] > ref["mean_step_seconds"] > 0


def test_the_report_file_holds_every_figure(report):
    saved = json.loads((report["_out"] / "gpu_check.json").read_text())
    assert saved["dtype"] == "float32" and saved["tiny"] is True
    assert {"device", "torch", "transformers", "engine", "rollout"} <= set(saved)
    assert saved["rollout"]["steps"] == report["rollout"]["steps"]


def test_group_advantages_normalise_and_stand_in_for_tied_groups(gpu_check):
    adv, tied = gpu_check.group_advantages([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5], 4)
    assert tied == 1
    assert sum(adv[:4]) == pytest.approx(0.0) and adv[0] > 0 > adv[1]
    assert adv[4:] == [1.0, -1.0, 1.0, -1.0]


def test_the_tokenizer_is_saved_for_the_gpu_machine(gpu_check, tmp_path):
    target = tmp_path / "tok"
    assert gpu_check.main(["--save-tokenizer", str(target)]) == 0
    tok = gpu_check.load_tokenizer(str(target))
    assert len(tok) == 49152 and tok.chat_template
    config = json.loads((target / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # transformers 4 reads it
    assert config["chat_template"] == tok.chat_template


def test_an_error_is_one_line_and_a_failing_exit(gpu_check, tmp_path, capsys):
    code = gpu_check.main(["--tiny", "--tokenizer", str(tmp_path / "none"), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("gpu_check: error:") and "not a directory" in err
    assert len(err.splitlines()) == 1

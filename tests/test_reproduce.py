"""train/reproduce_icpo.py: the summary files and the parallel runner (the long steps are the
harness's own commands, tested elsewhere)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from icpo_eval.testing.scripts import load_script
from tests.test_compare import models, write

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def script():
    return load_script(ROOT / "train" / "reproduce_icpo.py")


def test_summary_files(script, tmp_path, monkeypatch):
    monkeypatch.setattr(script, "BASE", "base")
    convs = models()
    write(tmp_path / "base-math", "base", convs)
    write(tmp_path / "icpo-math", "icpo", convs)
    out = tmp_path / "out"
    out.mkdir()
    script.summarise([tmp_path / "base-math", tmp_path / "icpo-math"], out, n_boot=100)
    md = (out / "summary.md").read_text()
    assert "100 resamples" in md and "## Reply categories" in md
    assert "| math | sharded | non-answer rate, underspecified turns (%) | icpo | 20 | 50.0 [" in md
    rows = json.loads((out / "summary.json").read_text())
    hit = [r for r in rows if r["model"] == "icpo" and r["figure"].startswith("non-answer")]
    assert hit[0]["diff"] == 50.0 and hit[0]["diff_lo"] < 50.0 < hit[0]["diff_hi"]
    with open(out / "progress.csv") as f:
        prog = list(csv.DictReader(f))
    icpo = {r["progress_bucket"]: r for r in prog if r["model"] == "icpo"}
    assert icpo["40-60%"]["non_answer_share"] == "0.500" and icpo["40-60%"]["turns"] == "20"
    assert icpo["0-20%"]["non_answer_share"] == "" and icpo["0-20%"]["turns"] == "0"


def test_parallel_runner_stops_on_a_failure(script, monkeypatch):
    calls = []
    real_popen = subprocess.Popen

    def popen(cmd, cwd, env):
        calls.append(env["OMP_NUM_THREADS"])
        code = "import sys; sys.exit(3)" if cmd[-1] == "bad" else "import time; time.sleep(30)"
        return real_popen([sys.executable, "-c", code])

    monkeypatch.setattr(script.subprocess, "Popen", popen)
    monkeypatch.setattr(script.os, "cpu_count", lambda: 2)
    with pytest.raises(subprocess.CalledProcessError):
        script.sh_parallel([["slow"], ["bad"], ["never"]], jobs=2)
    assert calls == ["1", "1"]  # two at a time, one thread each; the third never started


def test_training_table_averages_windows_of_logged_steps(script, tmp_path):
    log = tmp_path / "train_log.jsonl"
    steps = [{"step": i, "kl": 0.1 * i, "icpo/non_answer_under": 1.0} for i in range(1, 13)]
    steps[0]["icpo/non_answer_under"] = None  # a step without underspecified prompts
    log.write_text("\n".join(json.dumps(s) for s in steps) + "\n")
    table = script.training_table(log, window=10).splitlines()
    assert len(table) == 2 + 2
    first = table[2].split(" | ")
    assert table[2].startswith("| 1-10 |") and table[3].startswith("| 11-12 |")
    assert first[list(script.TRAIN_COLUMNS).index("KL") + 1] == "0.55"
    assert first[list(script.TRAIN_COLUMNS).index("reward, fully specified") + 1] == "–"


def test_the_online_experiment_states_each_target_met_or_missed():
    module = load_script(ROOT / "train" / "reproduce_online.py")
    from icpo_eval.compare import Estimate

    base, m = module.BASE, "hf/checkpoints/smollm2-icpo-online"

    def est(model, mode, figure, value, diff=None, lo=None, hi=None):
        return Estimate("math", mode, figure, model, value, value - 1, value + 1, diff, lo, hi)

    estimates = [
        est(base, "sharded", "over-clarification rate, fully specified turns (%)", 42.2),
        est(m, "sharded", "non-answer rate, underspecified turns (%)", 70.0, 45.0, 41.0, 49.0),
        est(m, "sharded", "over-clarification rate, fully specified turns (%)", 50.0, 7.8, 2, 12),
        est(m, "full", "over-clarification rate, fully specified turns (%)", 12.0, 5.0, 1, 9),
        est(m, "sharded", "P", 11.0, 0.8, -2.0, 3.0),
        est(m, "full", "P", 5.0, -2.0, -4.5, 0.4),
    ]
    rows = [r for r in module.targets(estimates, [m]).splitlines() if r.startswith(f"| {m}")]
    verdicts = [r.rsplit("|", 2)[-2].strip() for r in rows]
    # +40 with its lower bound (41) met; over-clarification above base missed; full 12% met;
    # P sharded above base met; P full's difference interval reaches above 0: within noise.
    assert verdicts == ["met", "missed", "met", "met", "met"]
    assert "(42.2%)" in rows[1] and "+45.0 [+41.0, +49.0]" in rows[0]
    estimates[1] = est(m, "sharded", "non-answer rate, underspecified turns (%)", 60, 41, 39, 43)
    rows = [r for r in module.targets(estimates, [m]).splitlines() if r.startswith(f"| {m}")]
    assert rows[0].rstrip(" |").endswith("missed")  # the point is met, the lower bound not


def test_the_online_experiment_refuses_an_unknown_model(monkeypatch, capsys):
    module = load_script(ROOT / "train" / "reproduce_online.py")
    monkeypatch.setattr("sys.argv", ["reproduce_online.py", "--models", "online,offlin"])
    with pytest.raises(SystemExit) as exc:
        module.main()
    assert exc.value.code == 2 and "unknown ['offlin']" in capsys.readouterr().err


def test_a_warm_started_online_recipe_names_its_single_turn_first_stage(tmp_path):
    module = load_script(ROOT / "train" / "reproduce_online.py")
    warm = ROOT / "train" / "smollm2-cpu-online-warm.yaml"
    stage = module.first_stage(warm)
    assert stage == ROOT / "train" / "smollm2-cpu-offline-warm.yaml"
    # The stage writes the checkpoint the online recipe starts from, in single-turn rollouts.
    assert f"hf/{module.recipe_value(stage, 'output_dir')}" == module.recipe_value(warm, "model")
    assert module.recipe_value(stage, "rollout") == "single"
    # The cold online recipe starts from the base model; an hf/ path no recipe writes, and a
    # broken file, name no stage.
    assert module.first_stage(ROOT / "train" / "smollm2-cpu-online.yaml") is None
    other = tmp_path / "other.yaml"
    other.write_text("model: hf/checkpoints/nobody-writes-this\nrollout: conversation\n")
    assert module.first_stage(other) is None
    other.write_text("model: [unclosed\n")
    assert module.first_stage(other) is None and module.recipe_value(other, "model") is None


def test_train_refuses_a_model_override_it_cannot_load_with_one_line(capsys):
    from icpo_eval.cli import main

    recipe = str(ROOT / "train" / "smollm2-cpu-online-warm.yaml")
    code = main(["train", "--config", recipe, "--model", "gpt-4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'gpt-4'" in err


def test_both_reproductions_share_the_protocol_flags_and_quick_shrinks_them(
    script, tmp_path, capsys, monkeypatch
):
    import argparse

    online = load_script(ROOT / "train" / "reproduce_online.py")
    for module in (script, online):
        monkeypatch.setattr("sys.argv", ["x", "--help"])
        with pytest.raises(SystemExit) as exc:
            module.main()
        assert exc.value.code == 0
        usage = capsys.readouterr().out
        for flag in ("--eval-limit", "--runs", "--temperature", "--batch-size", "--quick"):
            assert flag in usage, (module.__name__, flag)
    ap = argparse.ArgumentParser()
    script.protocol_arguments(ap, "icpo-online")
    a = ap.parse_args(["--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--quick"])
    work, out = script.apply_quick(a)
    assert (work, out) == (tmp_path / "w-quick", tmp_path / "o-quick")
    assert work.is_dir() and out.is_dir()
    assert (a.eval_limit, a.runs, a.train_instructions, a.bootstrap) == (4, 2, 6, 100)
    a = ap.parse_args([])
    assert (a.work, a.out, a.eval_limit, a.runs) == (
        "work/icpo-online",
        "results/icpo-online",
        100,
        5,
    )

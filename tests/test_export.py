"""Reward-data export: a row per assistant turn, q* augmentation, three formats that round-trip."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
from conftest import make_math, make_scripted_run
from test_cli import assert_one_line_error, cli

from icpo_eval.export import (
    FORMATS,
    SELECTION_FILE,
    build_rows,
    export_run,
    load_export,
    verl_rows,
)
from icpo_eval.families import Family, get_family
from icpo_eval.records import Instruction, Shard
from icpo_eval.store import load_run
from icpo_eval.tasksets import load_tasks, write_jsonl
from icpo_eval.verl_reward import compute_score


@pytest.fixture
def run_dir(tmp_path):
    return make_scripted_run(tmp_path)


def test_one_row_per_assistant_turn_with_the_prompt_the_model_saw(run_dir):
    _, convs = load_run(run_dir)
    rows = build_rows(run_dir)
    turns = [(c, t) for c in convs for t in c.assistant_turns]
    assert len(rows) == len(turns) > len(convs)  # the sharded conversations have several turns
    by_id = {r["row_id"]: r for r in rows}
    system = get_family("math").system_prompt(make_math())
    for conv, turn in turns:
        row = by_id[f"{conv.conversation_id}:t{turn.index}"]
        assert row["prompt"][0] == {"role": "system", "content": system}
        history = [{"role": t.role, "content": t.content} for t in conv.turns[: turn.index]]
        assert row["prompt"][1:] == history and history[-1]["role"] == "user"
        assert row["response"] == turn.content
        assert (row["fully_specified"], row["category"], row["score"], row["reward"]) == (
            turn.fully_specified,
            turn.category,
            turn.score,
            turn.reward,
        )
        assert Instruction.from_dict(json.loads(row["instruction"])).task_id == conv.task_id
    # Both kinds of turn are there: an underspecified question and a fully specified answer.
    assert {(r["fully_specified"], r["category"]) for r in rows} >= {
        (False, "clarification"),
        (True, "answer_attempt"),
    }
    assert {r["score"] for r in rows if r["category"] == "answer_attempt"} == {0.0, 1.0}


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_round_trips(run_dir, tmp_path, fmt):
    rows = build_rows(run_dir, augment=True)
    out, counts = export_run(run_dir, tmp_path / f"out-{fmt}", fmt, augment=True)
    if fmt == "verl":  # verl trains on every row: the export holds the selected prompts
        rows = verl_rows(rows)
        assert 0 < len(rows) < len(build_rows(run_dir, augment=True))
        assert json.loads((out / SELECTION_FILE).read_text())["rows_selected"] == len(rows)
    else:
        assert not (out / SELECTION_FILE).exists()
    assert load_export(out) == rows
    meta = json.loads((out / "export.json").read_text())
    assert meta["format"] == fmt and meta["rows"] == len(rows) == counts["rows"]
    assert meta["underspecified"] == sum(not r["fully_specified"] for r in rows)


def test_verl_layout_and_reward_function_agree_with_the_harness(run_dir, tmp_path):
    out, _ = export_run(run_dir, tmp_path / "verl", "verl")
    df = pd.read_parquet(out / "train.parquet")
    assert list(df.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert set(df["data_source"]) == {"icpo_eval/math"}
    for rec in df.to_dict(orient="records"):
        gt = rec["reward_model"]["ground_truth"]
        extra = rec["extra_info"]
        # The logged reply, replayed with its own truncation, earns the reward it was logged with.
        trunc = bool(extra["truncated"])
        score = compute_score(rec["data_source"], extra["response"], gt, extra, truncated=trunc)
        assert score == extra["reward"]


def test_augment_adds_full_and_underspecified_prompts(run_dir):
    rows = [r for r in build_rows(run_dir, augment=True) if r["source"] == "augment"]
    inst = make_math("t1")
    mine = {r["row_id"]: r for r in rows if r["task_id"] == "t1"}
    full = mine.pop("t1:full")
    assert full["fully_specified"] and full["prompt"][-1]["content"] == inst.fields["question"]
    assert len(mine) == 2
    removed_sets = []
    for row in mine.values():
        assert not row["fully_specified"] and row["response"] is None
        removed = row["removed_shards"]
        removed_sets.append(len(removed))
        assert 2 in removed and set(removed) <= {2, 3}  # the start; never shard 1 (the intent)
        text = row["prompt"][-1]["content"]
        assert inst.shards[0].shard in text
        for s in inst.shards[1:]:
            assert (s.shard in text) == (s.shard_id not in removed)
    assert sorted(removed_sets) == [1, 2]
    # Deterministic: the same run gives the same variants.
    again = [r for r in build_rows(run_dir, augment=True) if r["source"] == "augment"]
    assert again == rows


def test_generic_variants_of_lic_records_and_single_shard_tasks():
    family = Family()  # the default every family without its own rule uses
    lic = Instruction("x", "code", [Shard(i, f"Shard {i}.") for i in range(1, 5)], None, {})
    variants = family.underspecified_variants(lic, random.Random(0), n=5)
    assert len(variants) == 5 and len({tuple(r) for _, r in variants}) == 5
    assert {len(r) for _, r in variants} == {1, 2}
    for text, removed in variants:
        assert 1 not in removed and 1 <= len(removed) <= 2 and text.startswith("Shard 1.")
    one = Instruction("y", "code", [Shard(1, "Only shard.")], None, {})
    assert family.underspecified_variants(one, random.Random(0)) == []


def test_math_variants_always_remove_the_starting_quantity():
    math = get_family("math")
    for inst in load_tasks("math", limit=60):
        start = min(inst.required_ids - {1})
        variants = math.underspecified_variants(inst, random.Random(0))
        assert variants and all(start in removed for _, removed in variants)
        assert variants[0][1] == [start]
        text = variants[0][0]
        assert inst.shard(start).shard not in text and text.startswith(inst.shards[0].shard)


def test_cli_export_and_its_errors(run_dir, tmp_path):
    out = tmp_path / "cli-out"
    proc = cli("export", str(run_dir), "--format", "jsonl", "--augment", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "rows" in proc.stdout and (out / "rows.jsonl").exists()
    before = (out / "rows.jsonl").read_bytes()
    # A non-empty output directory is refused and left as it was.
    proc = cli("export", str(run_dir), "-o", str(out))
    assert_one_line_error(proc, "not empty")
    assert (out / "rows.jsonl").read_bytes() == before
    assert_one_line_error(cli("export", str(tmp_path / "nope"), "-o", str(tmp_path / "o2")), "nope")
    other = tmp_path / "other.jsonl"
    write_jsonl([make_math("zzz")], other)
    proc = cli("export", str(run_dir), "--tasks", str(other), "-o", str(tmp_path / "o3"))
    assert_one_line_error(proc, "not found", "--tasks")
    assert_one_line_error(cli("export", str(run_dir), "-o", str(tmp_path)), "not empty")

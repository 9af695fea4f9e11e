"""Merging run directories into the leaderboard, and refusing to mix settings."""

import pandas as pd
import pytest

from icpo_eval.cli import main
from icpo_eval.errors import IcpoError
from icpo_eval.leaderboard import ALL, COLUMNS, build
from icpo_eval.records import RunSpec, Turn
from icpo_eval.store import RunStore
from tests.conftest import make_conversation


def write_run(
    directory, model="m", family="math", mode="sharded", scores=(1.0, 0.0), tag="", **spec_kw
):
    spec = RunSpec(model=model, out=str(directory), version="0.1.0", **spec_kw)
    store, _ = RunStore.open(directory, spec)
    for i, score in enumerate(scores):
        turn = Turn(
            1,
            "assistant",
            "x",
            category="answer_attempt",
            fully_specified=True,
            score=score,
            reward=score,
        )
        store.append(
            make_conversation(
                conversation_id=f"{model}:{family}:{mode}:{i}{tag}",
                run_id=directory.name,
                task_id=f"{family}-{i}",
                family=family,
                mode=mode,
                model=model,
                turns=[turn],
                final_score=score,
                first_answer_turn=1,
            )
        )
    store.close()


def test_runs_of_two_models_merge_into_one_table(tmp_path):
    write_run(tmp_path / "a", model="model-a", scores=(1.0, 1.0))
    write_run(tmp_path / "b", model="model-b", scores=(0.0, 1.0))
    df = build([tmp_path])
    assert list(df.columns) == COLUMNS
    math = df[df.family == "math"]
    assert dict(zip(math.model, math.P)) == {"model-a": 100.0, "model-b": 50.0}


def test_aggregate_row_pools_the_families_of_a_model(tmp_path):
    write_run(tmp_path / "math", family="math", scores=(1.0, 1.0))
    write_run(tmp_path / "code", family="code", scores=(0.0, 0.0))
    df = build([tmp_path])
    agg = df[df.family == ALL]
    assert len(agg) == 1 and agg.P.iloc[0] == 50.0  # 4 instructions: 100, 100, 0, 0
    assert agg.n_instructions.iloc[0] == 4
    single = build([tmp_path / "math"])
    rows = single.set_index("family")
    assert rows.loc[ALL, "P"] == rows.loc["math", "P"] == 100.0  # one family: the same figures


def test_runs_with_different_settings_are_refused(tmp_path, capsys):
    write_run(tmp_path / "greedy", scores=(1.0,))
    write_run(tmp_path / "hot", scores=(0.0,), tag="-hot", temperature=0.7)
    with pytest.raises(IcpoError, match=r"different settings \(temperature 0\.0 vs 0\.7\)"):
        build([tmp_path])
    assert main(["leaderboard", str(tmp_path), "-o", str(tmp_path / "lb.csv")]) == 2
    assert "temperature" in capsys.readouterr().err
    assert not (tmp_path / "lb.csv").exists()


def test_the_same_conversation_in_two_runs_is_refused(tmp_path):
    write_run(tmp_path / "one")
    write_run(tmp_path / "copy")
    with pytest.raises(IcpoError, match="is in both"):
        build([tmp_path])


def test_cli_writes_the_csv(tmp_path):
    write_run(tmp_path / "run")
    out = tmp_path / "lb.csv"
    assert main(["leaderboard", str(tmp_path / "run"), "-o", str(out)]) == 0
    df = pd.read_csv(out)
    assert df.loc[0, "P"] == 50.0 and df.loc[0, "mean_reward"] == 0.5

"""The HTML report: one self-contained file with the table, every plot and escaped transcripts."""

import os
import re
import shutil
import subprocess

import pytest

from icpo_eval.cli import main
from icpo_eval.errors import IcpoError
from icpo_eval.records import RunSpec, Turn
from icpo_eval.report import render, write_report
from icpo_eval.store import RunStore
from tests.conftest import make_conversation

PLOT_IDS = (
    "plot-p-by-mode",
    "plot-degradation",
    "plot-progress",
    "plot-first-answer",
    "plot-spread",
)
EVIL = "<script>alert('x')</script>"


def _user(index, shard, text):
    return Turn(index, "user", text, shards=[shard], note="next")


def _assistant(index, text, category, fully, score=None):
    answers = category == "answer_attempt"
    reward = (score or 0.0) if fully else float(category != "answer_attempt")
    return Turn(
        index,
        "assistant",
        text,
        category=category,
        fully_specified=fully,
        answer="42" if answers else None,
        score=score if answers else None,
        reward=reward,
    )


def _conversation(model, mode, i, turns, final, first):
    return make_conversation(
        conversation_id=f"{model}:{mode}:{i}",
        task_id=f"math-{i}",
        mode=mode,
        model=model,
        n_shards=2,
        turns=turns,
        final_score=final,
        first_answer_turn=first,
    )


def write_run(directory, model, modes=("full", "sharded"), n=2, evil=False):
    """A run of ``n`` two-shard math instructions in each of ``modes``."""
    spec = RunSpec(model=model, out=str(directory), version="0.1.0")
    store, _ = RunStore.open(directory, spec)
    for i in range(n):
        for mode in modes:
            if mode == "sharded":
                turns = [
                    _user(0, 1, "How many apples?"),
                    _assistant(1, "How many did you start with?", "clarification", False),
                    _user(2, 2, "I had 40 and got 2 more."),
                    _assistant(3, "You have 42.", "answer_attempt", True, score=float(i == 0)),
                ]
                conv = _conversation(model, mode, i, turns, float(i == 0), 2)
            else:
                content = EVIL if evil and i == 0 else "I had 40 apples and got 2. How many?"
                turns = [
                    Turn(0, "user", content, shards=[1, 2]),
                    _assistant(1, "42", "answer_attempt", True, score=1.0),
                ]
                conv = _conversation(model, mode, i, turns, 1.0, 1)
            store.append(conv)
    store.close()


def figure(html, plot_id):
    m = re.search(rf'<figure id="{plot_id}"[^>]*>(.*?)</figure>', html, re.S)
    assert m, f"no figure {plot_id}"
    return m.group(1)


@pytest.fixture
def two_models(tmp_path):
    write_run(tmp_path / "results" / "a", "model-a", evil=True)
    write_run(tmp_path / "results" / "b", "model-b")
    return tmp_path / "results"


def test_report_is_one_self_contained_document(two_models, tmp_path):
    out = write_report([two_models], tmp_path / "out" / "report.html")
    html = out.read_text(encoding="utf-8")
    assert html.count("<html") == 1 and html.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert "<link" not in html
    for plot_id in PLOT_IDS:
        body = figure(html, plot_id)
        assert '<img src="data:image/png;base64,' in body
        assert "<figcaption>" in body


def test_leaderboard_table_holds_both_models(two_models):
    html = render([two_models])
    table = re.search(r'<table class="lb">(.*?)</table>', html, re.S).group(1)
    assert "model-a" in table and "model-b" in table
    assert table.count("<tr>") == 1 + 8  # header + 2 models x 2 modes x (math, all)


def test_transcripts_are_escaped(two_models):
    html = render([two_models])
    assert EVIL not in html and "<script>" not in html
    assert "&lt;script&gt;" in html
    assert html.count('<details class="conv"') == 8
    assert "clarification" in html and "fully specified" in html and "underspecified" in html


def test_transcripts_are_capped_with_a_note(two_models):
    html = render([two_models], max_transcripts=3)
    assert html.count('<details class="conv"') == 3
    assert "5 left out" in html


def test_runs_without_sharded_conversations_say_no_data(tmp_path):
    write_run(tmp_path / "full-only", "model-a", modes=("full",))
    html = render([tmp_path / "full-only"])
    for plot_id in PLOT_IDS:
        assert '<img src="data:image/png;base64,' in figure(html, plot_id)
    empty = set(re.findall(r'<figure id="([^"]+)" class="no-data">', html))
    assert empty == {"plot-progress", "plot-first-answer"}
    assert "No data in these runs." in figure(html, "plot-progress")
    assert "No data" not in figure(html, "plot-p-by-mode")


def test_plots_say_no_data_when_empty():
    from icpo_eval.report import make_plots

    plots = make_plots([])
    assert [p.id for p in plots] == list(PLOT_IDS)
    assert all(p.no_data and p.png_base64 for p in plots)


def test_mixed_settings_are_refused(tmp_path):
    write_run(tmp_path / "a", "model-a")
    spec = RunSpec(model="model-a", out=str(tmp_path / "hot"), version="0.1.0", temperature=0.7)
    store, _ = RunStore.open(tmp_path / "hot", spec)
    store.append(_conversation("model-a", "full", 9, [], 0.0, None))
    store.close()
    with pytest.raises(IcpoError, match="different settings"):
        render([tmp_path])


def test_cli_writes_the_report(two_models, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(two_models), "-o", str(out), "--max-transcripts", "2"]) == 0
    assert out.exists() and "6 left out" in out.read_text(encoding="utf-8")
    assert str(out) in capsys.readouterr().out


def test_cli_missing_directory_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "nope"), "-o", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("icpo-eval: error:") and "nope" in err[0]
    assert not out.exists()


# -- in a real browser --------------------------------------------------------------------------
# Headless Chromium (Debian's `chromium`; .ci/run installs it when missing) loads the page, must
# log nothing to the console, and takes a screenshot. Console messages reach stderr as
# "INFO:CONSOLE" lines with --enable-logging=stderr --log-level=0; a control page that does log
# proves the check can fail.

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def chromium_console(page, screenshot, tmp_path):
    """Load ``page`` headless, save a screenshot; return the console lines it logged."""
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--hide-scrollbars",
            "--window-size=1280,2400",
            "--enable-logging=stderr",
            "--log-level=0",
            f"--screenshot={screenshot}",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
    )
    assert screenshot.exists(), proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@needs_chromium
def test_console_check_catches_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom'); nope();</script></body></html>")
    lines = chromium_console(bad, tmp_path / "bad.png", tmp_path)
    assert any("boom" in x for x in lines) and any("nope" in x for x in lines)


@needs_chromium
def test_report_renders_in_chromium_without_console_errors(two_models, tmp_path):
    page = write_report([two_models], tmp_path / "report.html")
    shot = tmp_path / "report.png"
    assert chromium_console(page, shot, tmp_path) == []
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a page, not a blank


def test_capped_transcripts_are_shared_between_models(tmp_path):
    write_run(tmp_path / "a", "model-a", n=4)  # 8 conversations
    write_run(tmp_path / "b", "model-b", n=1)  # 2 conversations
    html = render([tmp_path], max_transcripts=6)
    shown = re.findall(r'<span class="tag">(model-[ab])</span>', html)
    # Equal shares (3 each) but model-b has only 2: model-a takes the one left over.
    assert shown.count("model-b") == 2 and shown.count("model-a") == 4
    assert "4 left out" in html

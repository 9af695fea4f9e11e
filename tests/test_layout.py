"""The house's doors: bundled folders found installed or in a checkout, one validation of a run
spec, registries for judges and simulators, and the user's runs kept apart from the project's."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from icpo_eval import paths
from icpo_eval.cli import main
from icpo_eval.errors import IcpoError
from icpo_eval.judges import RuleJudge, get_judge, register_judge
from icpo_eval.models import model_kind
from icpo_eval.records import RunSpec
from icpo_eval.simulator import RuleSimulator, get_simulator

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "results" / "reference" / "smollm2-math20"


def test_bundled_folders_are_read_inside_an_installed_package_first(tmp_path, monkeypatch):
    # A checkout: the folders beside the package.
    assert paths.bundled_dir("tasks") == ROOT / "tasks"
    assert (paths.TASKS_DIR / "math.jsonl").is_file()
    assert (paths.PROMPTS_DIR / "system_math.j2").is_file()
    assert (paths.SIMULATORS_DIR / "rule.yaml").is_file()
    # An installed wheel: the copies setup.py puts at icpo_eval/_data/ win.
    package = tmp_path / "site-packages" / "icpo_eval"
    (package / "_data" / "tasks").mkdir(parents=True)
    monkeypatch.setattr(paths, "PACKAGE_DIR", package)
    assert paths.bundled_dir("tasks") == package / "_data" / "tasks"
    assert paths.bundled_dir("prompts") == package.parent / "prompts"  # not carried: beside


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"modes": ["sideways"]}, "unknown mode"),
        ({"modes": []}, "unknown mode"),
        ({"runs": 0}, "--runs"),
        ({"max_turns": 0}, "--max-turns"),
        ({"concurrency": 0}, "--concurrency"),
        ({"limit": 0}, "--limit"),
        ({"temperature": -1.0}, "--temperature"),
        ({"top_p": 0.0}, "--top-p"),
        ({"timeout": 0.0}, "--timeout"),
        ({"model": "local/gpt5"}, "unknown local model"),
        ({"model": "nonsense"}, "unknown model"),
    ],
)
def test_run_spec_checks_itself(changes, words):
    spec = RunSpec(**{"model": "local/smollm2", **changes})
    with pytest.raises(IcpoError, match=words):
        spec.check()


def test_run_spec_check_passes_a_good_spec_and_can_leave_the_model_alone():
    RunSpec(model="openai/gpt-4o-mini", modes=["sharded"], limit=3).check()
    RunSpec(model="a backend of the caller's", modes=["full"]).check(model=False)


def test_model_kind_reads_the_model_string_once():
    assert model_kind("local/smollm2") == "local"
    assert model_kind("hf/checkpoints/x") == "hf"
    assert model_kind("hosted_vllm/Qwen/Qwen2.5-7B") == "api"
    for bad in ("hf/", "local/", "gpt-4o", "/x"):
        with pytest.raises(IcpoError):
            model_kind(bad)


def test_judges_and_simulators_come_from_registries():
    assert isinstance(get_judge("rule"), RuleJudge)
    for bad in ("oracle", "llm:", "rule:extra"):
        with pytest.raises(IcpoError, match="unknown judge .*use rule or llm:MODEL"):
            get_judge(bad)
    seen = []

    @register_judge("echo-test", "echo-test")
    def _echo(arg, api):
        seen.append(arg)
        return RuleJudge()

    assert isinstance(get_judge("echo-test:a:b"), RuleJudge) and seen == ["a:b"]
    assert isinstance(get_simulator("rule"), RuleSimulator)
    profile = get_simulator(str(ROOT / "simulators" / "rule.yaml"))  # a profile by path
    assert isinstance(profile, RuleSimulator)
    with pytest.raises(IcpoError, match="unknown simulator"):
        get_simulator("no-such-profile")


def test_a_judge_decision_says_who_decided():
    from icpo_eval.families import get_family
    from icpo_eval.tasksets import read_jsonl

    inst = read_jsonl(ROOT / "tasks" / "math.jsonl")[0]
    history = [{"role": "user", "content": inst.shards[0].shard}]
    d = RuleJudge().decide(inst, get_family(inst.task), "How many are there at the start?", history)
    assert (d.category, d.judge) == ("clarification", "rule")


def _copy_run(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    spec = json.loads((dst / "run.json").read_text())
    spec["out"] = str(dst)
    (dst / "run.json").write_text(json.dumps(spec))


def test_plain_leaderboard_and_report_read_the_users_runs_not_the_references(
    tmp_path, monkeypatch, capsys
):
    """The README's `make demo` then a plain `icpo-eval leaderboard` / `icpo-eval report`: the
    demo's conversations repeat the committed reference run's ids, which must not collide."""
    monkeypatch.chdir(tmp_path)
    _copy_run(REFERENCE, tmp_path / "results" / "reference" / "smollm2-math20")
    # Only the references: a plain leaderboard says where the user's runs would be.
    assert main(["leaderboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no runs of yours under results" in err
    # A user run with the same model and tasks: the same conversation ids as the reference.
    _copy_run(REFERENCE, tmp_path / "results" / "quickstart")
    assert main(["leaderboard"]) == 0
    board = (tmp_path / "results" / "leaderboard.csv").read_text().splitlines()
    n_convs = sum(1 for _ in open(REFERENCE / "conversations.jsonl"))
    counted = [line for line in board[1:] if ",all," not in line]
    assert sum(int(line.split(",")[8]) for line in counted) == n_convs  # counted once
    assert main(["report", "--bootstrap", "0"]) == 0
    assert "results/quickstart" in (tmp_path / "report.html").read_text()
    assert "results/reference" not in (tmp_path / "report.html").read_text()
    # Named explicitly, the references are read; both together are refused as before.
    capsys.readouterr()
    assert main(["leaderboard", "results/reference", "-o", "ref.csv"]) == 0
    assert main(["leaderboard", "results", "-o", "both.csv"]) == 2
    assert "is in both" in capsys.readouterr().err


def test_code_runs_say_which_sandbox_graded_them(tmp_path, monkeypatch, capsys):
    """A run that grades model-written code records the sandbox's strength on each code
    conversation; with only the weak fallback it says so in one line, and --sandbox strict
    refuses before anything is written."""
    from conftest import ScriptedBackend

    from icpo_eval import sandbox
    from icpo_eval.runner import run
    from icpo_eval.store import load_run

    tasks = tmp_path / "tasks.jsonl"
    code = (ROOT / "tasks" / "code.jsonl").read_text().splitlines()[0]
    math = (ROOT / "tasks" / "math.jsonl").read_text().splitlines()[0]
    tasks.write_text(code + "\n" + math + "\n")
    backend = ScriptedBackend(lambda messages: "Which input format do you want?")

    def spec(out: str, mode: str = "auto") -> RunSpec:
        return RunSpec(model="scripted", tasks=str(tasks), modes=["full"], out=out, sandbox=mode)

    monkeypatch.setattr(sandbox, "strength", lambda: "weak")
    with pytest.raises(IcpoError, match="--sandbox strict"):
        run(spec(str(tmp_path / "strict"), "strict"), backend=backend, progress=False)
    assert not (tmp_path / "strict").exists()
    run(spec(str(tmp_path / "weak")), backend=backend, progress=False)
    assert capsys.readouterr().err.count("weak sandbox") == 1
    _, convs = load_run(tmp_path / "weak")
    assert {c.family: c.sandbox for c in convs} == {"code": "weak", "math": None}
    monkeypatch.setattr(sandbox, "strength", lambda: "strong")
    run(spec(str(tmp_path / "strong"), "strict"), backend=backend, progress=False)
    assert "weak sandbox" not in capsys.readouterr().err
    _, convs = load_run(tmp_path / "strong")
    assert {c.family: c.sandbox for c in convs} == {"code": "strong", "math": None}


def test_every_reference_run_the_readme_lists_is_committed():
    """A folder under results/ is ignored by git unless .gitignore names it: a reference run
    listed in the README must be there, with files git tracks (not ignores)."""
    root = ROOT
    text = (root / "README.md").read_text()
    section = text.split("## Reference runs", 1)[1].split("\n## ", 1)[0]
    folders = re.findall(r"^- `(results/[\w.-]+)/`", section, flags=re.M)
    assert len(folders) >= 5, folders
    git = shutil.which("git")
    for folder in folders:
        files = [p for p in (root / folder).rglob("*") if p.is_file()]
        assert files, f"{folder}: listed in the README, not in the checkout"
        if git is None or not (root / ".git").exists():
            continue
        ignored = subprocess.run(
            [git, "check-ignore", "-q", str(files[0].relative_to(root))], cwd=root
        )
        assert ignored.returncode == 1, f"{folder}: .gitignore keeps it out of commits"

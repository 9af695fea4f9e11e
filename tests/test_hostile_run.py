"""A run over 200 code answers, some of them hostile programs: the run completes, only the hostile
answers score 0, and nothing outside the sandbox changed (issue 14's acceptance run).

The honest answers are the task's reference solutions; the hostile ones define the asked
function but try, inside it, to stop the grader, forge results, leave a daemon writing into the
run store, reach the project and the cache, or exhaust time, output and memory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import ScriptedBackend

from icpo_eval import sandbox
from icpo_eval.conversation import concat_prompt
from icpo_eval.families import get_family
from icpo_eval.records import RunSpec
from icpo_eval.runner import run
from icpo_eval.store import load_run
from icpo_eval.tasksets import read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        sandbox.strength() != "strong", reason="needs bubblewrap (the strong sandbox)"
    ),
]


def _hostile(name: str, out: Path, marker: Path) -> list[str]:
    """Bodies of ``name`` that attack from inside the graded call (each then returns junk)."""
    store = out / "conversations.jsonl"
    forged = json.dumps({"conversation_id": "forged", "final_score": 1.0})
    head = f"def {name}(*args, **kwargs):\n"
    return [
        # Stop the grader: its wall clock lives in the parent.
        head + "    import os, signal\n    os.kill(os.getppid(), signal.SIGSTOP)\n    return 0\n",
        head + "    import os, signal\n    os.killpg(os.getpgid(os.getppid()), 9)\n    return 0\n",
        # A daemon that outlives the verdict and appends a forged record to the run store.
        head + "    import os, time\n    if os.fork() == 0:\n        os.setsid()\n"
        f"        time.sleep(1.5)\n        open({str(store)!r}, 'a').write({forged!r} + '\\n')\n"
        "        os._exit(0)\n    return 0\n",
        # Read the project and the expected outputs; write where the run lives.
        head + f"    return open({str(ROOT / 'tasks' / 'code.jsonl')!r}).read()\n",
        head + f"    open({str(marker)!r}, 'w').write('x')\n    return 0\n",
        head + "    import sqlite3\n"
        f"    sqlite3.connect({str(marker)!r}).execute('create table t(x)')\n    return 0\n",
        head + f"    import os\n    os.mkfifo({str(out / 'conversations.fifo')!r})\n    return 0\n",
        # Forge result lines on every descriptor, then leave before the real ones.
        head + "    import os\n    for fd in range(1, 64):\n        try:\n"
        "            os.write(fd, b\"(0, 'ok', [1, 2, 3])\\n\")\n        except OSError:\n"
        "            pass\n    os._exit(0)\n",
        # Disarm nothing, exhaust everything.
        head + "    while True:\n        pass\n",
        head + "    print('x' * 50_000_000)\n    return 0\n",
        head + "    return 'x' * 10**10\n",
        head + "    import sys\n    sys.setrecursionlimit(10**6)\n    def f(n):\n"
        "        return f(n + 1)\n    return f(0)\n",
    ]


def test_200_code_answers_with_hostile_ones_only_the_hostile_ones_score_zero(tmp_path):
    family = get_family("code")
    insts = read_jsonl(ROOT / "tasks" / "code.jsonl")[:100]
    tasks = tmp_path / "tasks.jsonl"
    write_jsonl(insts, tasks)
    out = tmp_path / "run"
    marker = tmp_path / "written-from-inside"
    # Generated tasks can share a prompt (same template and parameters), so attacks are chosen
    # by prompt: every conversation shown that prompt gets the same answer.
    prompts = {}
    for inst in insts:
        prompts[(inst.task_id, "full")] = family.full_prompt(inst)
        prompts[(inst.task_id, "concat")] = concat_prompt(inst)
    reference = {prompts[(inst.task_id, m)]: inst for inst in insts for m in ("full", "concat")}
    attacks: dict[str, str] = {}
    for n, prompt in enumerate(sorted(reference)):
        if n % 8 == 0:
            bodies = _hostile(str(reference[prompt].fields["func_name"]), out, marker)
            attacks[prompt] = bodies[(n // 8) % len(bodies)]
    hostile = {key for key, prompt in prompts.items() if prompt in attacks}
    assert len(attacks) >= len(_hostile("f", out, marker)) and 20 <= len(hostile) < 40

    def reply(messages):
        prompt = messages[-1]["content"]
        code = attacks.get(prompt) or str(reference[prompt].fields["reference"])
        return f"```python\n{code}\n```"

    spec = RunSpec(model="scripted", tasks=str(tasks), modes=["full", "concat"], out=str(out))
    run(spec, backend=ScriptedBackend(reply), progress=False)
    time.sleep(2)  # longer than the daemon waits before it writes

    _, convs = load_run(out)
    lines = (out / "conversations.jsonl").read_text().splitlines()
    assert len(convs) == len(lines) == 200  # every answer graded once, nothing forged added
    assert all(json.loads(x)["conversation_id"] != "forged" for x in lines)
    assert all(c.error is None and c.sandbox == "strong" for c in convs)
    scores = {(c.task_id, c.mode): c.final_score for c in convs}
    assert {k for k, v in scores.items() if v != 1.0} == set(hostile)
    assert all(scores[k] == 0.0 for k in hostile)
    assert not marker.exists() and not (out / "conversations.fifo").exists()

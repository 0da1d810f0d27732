"""Feedback that pastes and runs (issue 11, item 6), on small inputs: no grading here.

The minimal example of a failure is unindented, between two comment lines, and ends in a
print of the wrong value; pasted as it is into `python -` it runs. A worker's output is
capped per failure; a summary line shows where expected and got first differ; an
exception raised by the submission keeps the clause's text, a hint and the reason. The
examples of real failures are replayed by tests/test_cache_checks_catch_mutants.py (every
cache mutant) and tests/test_zoo.py (one per zoo bug).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from spec.clauses import BY_ID
from spec.grader.reports import brief, failure_md, first_difference
from spec.isolation.driver import SubmissionInfo, SubmissionRaised
from spec.results import cap_output, explain, own_frames
from spec.session import EXAMPLE_END, EXAMPLE_START, Script, Session, show_line
from tests.zoo.replay import example, problem

REFERENCE = SubmissionInfo(module="reference.memoization", tensor="reference.tensor:Tensor", names=())


def test_show_line_prints_what_came_back() -> None:
    assert show_line("keys, values = cache.get(0)", np.zeros(1), "keys.data[:, :, 2, :]") == 'print("got:", keys.data[:, :, 2, :])'
    assert show_line("print(cache.seq_pos)", 3) == 'print("got:", cache.seq_pos)'
    assert show_line("logits = model.forward(x)  # compare with full[2]", np.zeros(2)) == 'print("got:", logits.data)'
    assert show_line("cache.update(0, k, v)", "no exception") == 'print("got: no exception (the call above returned normally)")'
    assert show_line("cache.update(0, k, v)", np.zeros(2)) is None  # nothing to print: a statement


def test_the_example_is_unindented_marked_and_runs_pasted_into_python(tmp_path: Path) -> None:
    script = Script(REFERENCE, ["cache = KVCache(1, 2, 1, 1, 1)", "cache.update(0, pattern(1, (1, 1, 1, 1)), pattern(-1, (1, 1, 1, 1)))",
                                "cache.advance()"])
    text = script.render("keys, values = cache.get(0)", 'print("got:", keys.data[:, :, 0, :])')
    lines = text.splitlines()
    assert lines[0] == EXAMPLE_START and lines[-1] == EXAMPLE_END
    assert all(line in lines for line in script.lines)  # as recorded: not indented
    assert lines[1] == "import numpy as np" and "def pattern(tag, shape):" in lines
    proc = subprocess.run([sys.executable, "-"], input=text, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "got: [[[1.001]]]"


def test_a_failure_message_carries_the_example_and_the_replay_judges_it() -> None:
    s = Session.__new__(Session)
    s.script, s._names, s._last_query = Script(REFERENCE, ["cache = KVCache(1, 1, 1, 1, 1)"]), {}, None
    failure = s.fail("KV-CON-1", 0, 3, "print(cache.seq_pos)", hint="seq_pos starts at 0")
    message = str(failure)
    script = example(message)
    assert script is not None and script.startswith(EXAMPLE_START) and 'print("got:", cache.seq_pos)' in script
    assert script.count("cache.seq_pos") == 1  # the failing print is replaced, not repeated
    s.record("print('cached:', tokens)")  # a print recorded in the script, then reported as the failing call
    again = example(str(s.fail("KV-CON-1", [1], [2], "print('cached:', tokens)")))
    assert again is not None and again.count("tokens)") == 1 and "print(\"got:\", 'cached:', tokens)" in again
    assert problem(message, 0, "got: 3\n", "") is None
    assert problem(message, 0, "got: 0\n", "") is not None  # the bug is fixed: it no longer reproduces
    assert problem(message, 1, "", "Traceback ...\nNameError: x\n") is not None


def test_captured_output_is_capped_and_repeats_collapse() -> None:
    text = "start\n" + "tick\n" * 500 + "\n".join(f"line {i}" for i in range(100)) + "\n" + "x" * 1000
    capped = cap_output(text).splitlines()
    assert capped[0] == "start" and capped[1] == "tick   [this line 500 times in a row]"
    assert len(capped) == 2 * 12 + 1 and "more lines" in capped[12]
    assert capped[-1].startswith("x" * 240 + " [... 760 more characters]")


def test_summary_line_shows_where_expected_and_got_first_differ() -> None:
    expected = "[[[1.001, 1.002, 1.003, 1.004, 1.005, 1.006],\n  [2.001, 2.002, 2.003, 2.004, 2.005, 2.006]]]"
    got = "[[[1.001, 1.002, 1.003, 1.004, 1.005, 1.006],\n  [2.001, 2.002, 2.003, 0.   , 2.005, 2.006]]]"
    line = brief(f"[KV-GET-2] MUST: text\nCall:     keys, values = cache.get(0)\nExpected: {expected}\nGot:      {got}\nHint: h")
    assert line.startswith("[KV-GET-2] expected ...") and "2.004" in line and "0. " in line
    e, g = first_difference("abc", "abd")
    assert (e, g) == ("abc", "abd")


def test_an_exception_from_student_code_keeps_clause_hint_and_why() -> None:
    tb = ('Traceback (most recent call last):\n'
          f'  File "{Path(__file__).resolve().parent.parent / "spec" / "isolation" / "local.py"}", line 170, in _call\n'
          '    return fn()\n'
          '  File "/tmp/s/tinytorch/perf/memoization.py", line 55, in update\n'
          '    raise ValueError("full")\n'
          'ValueError: full')
    exc = SubmissionRaised("ValueError", ("ValueError", "Exception"), "full", tb)
    exc.kvspec_script = f"{EXAMPLE_START}\ncache.update(0, k, v)\n{EXAMPLE_END}"  # type: ignore[attr-defined]
    message = explain(exc, ["KV-UPD-1", "KV-UPD-2"])
    assert message.startswith("[KV-UPD-1, KV-UPD-2] your code raised ValueError: full")
    for clause in ("KV-UPD-1", "KV-UPD-2"):
        assert BY_ID[clause].text in message and BY_ID[clause].why in message
    assert "Hint:" in message and "local.py" not in message and "memoization.py\", line 55" in message
    assert message.rstrip().endswith(EXAMPLE_END)
    assert "spec" not in own_frames(tb).split("Traceback")[1].split("\n")[1]


def test_report_md_puts_the_example_in_a_python_block_of_its_own() -> None:
    output = f"[KV-CON-1] MUST: t\nGot: 3\nMinimal example:\n{EXAMPLE_START}\nprint(1)\n{EXAMPLE_END}\n\nWhat your code printed:\nhi"
    blocks = failure_md(output)
    assert blocks[0].startswith("```text\n[KV-CON-1]") and blocks[2] == f"```python\n{EXAMPLE_START}\nprint(1)\n{EXAMPLE_END}\n```"
    assert blocks[4] == "```text\nWhat your code printed:\nhi\n```"

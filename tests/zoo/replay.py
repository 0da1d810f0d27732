"""Paste a report's minimal examples into a fresh Python and check that they show the failure.

A failure message carries its example between two comment lines (spec.session's
EXAMPLE_START and EXAMPLE_END). `replay` takes that text verbatim, pipes it into
`python -` in the submission's directory, and `problem` judges the run against the
message: the example must end the way the message says the code behaved, i.e.

- "your code raised X": the run dies with X;
- Got is an exception ("ValueError: ..."): the run dies with it;
- Got is "no exception": the run prints "got: no exception";
- otherwise the run ends normally and its last "got:" print shows Got's numbers (or its
  text, when Got has none).

Messages about crashes, hangs and unavailable code are not judged (nothing to print).

    python -m tests.zoo.replay OUT_DIR SUBMISSIONS_DIR   # OUT_DIR/<name>/results.json of a batch grade
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from spec.grader.reports import fields
from spec.session import EXAMPLE_END, EXAMPLE_START

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)")
RAISED = re.compile(r"your code raised (\w+)")
EXCEPTION = re.compile(r"^['\"]?(\w+(?:Error|Exception|Interrupt|Exit))(?::|['\"]?$)")  # repr quotes either way


@dataclass(frozen=True)
class Replay:
    submission: str
    check: str
    message: str
    script: str
    returncode: int
    stdout: str
    stderr: str

    def problem(self) -> str | None:
        return problem(self.message, self.returncode, self.stdout, self.stderr)


def example(message: str) -> str | None:
    """The example exactly as it appears in the message, markers included, or None."""
    start, end = message.find(EXAMPLE_START), message.find(EXAMPLE_END)
    if start < 0 or end < start:
        return None
    return message[start : end + len(EXAMPLE_END)] + "\n"


def numbers(text: str) -> list[float]:
    return [float(x) for x in NUMBER.findall(text)]


def _last_exception(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def problem(message: str, returncode: int, stdout: str, stderr: str) -> str | None:
    """Why the run does not reproduce the failure the message describes, or None."""
    head = message.splitlines()[0] if message else ""
    raised = RAISED.search(head)
    if raised and raised.group(1) == "ContractViolation":
        # The grader's word for a result of the wrong kind (get returned one array, say):
        # the example runs and shows that result instead.
        return None if returncode == 0 else f"the example failed (exit {returncode}): {_last_exception(stderr)!r}"
    if raised:
        if returncode == 0 or not _last_exception(stderr).startswith(raised.group(1)):
            return f"expected the example to raise {raised.group(1)}; exit {returncode}, last line {_last_exception(stderr)!r}"
        return None
    found = fields(message)
    if "Got" not in found:
        return None  # a crash, a hang, unavailable code: nothing the example can print
    got = found["Got"]
    exc = EXCEPTION.match(got)
    if exc and "no exception" not in got:
        last = _last_exception(stderr)
        if returncode == 0 or not last.startswith(exc.group(1)) or got.strip("'\"")[:80] not in last:
            return f"expected the example to raise {got}; exit {returncode}, last line {last!r}"
        return None
    if returncode != 0:
        return f"the example failed (exit {returncode}): {_last_exception(stderr)!r}"
    if got.strip("'\"") == "see the hint":
        return None  # KV-MEMO's verdicts carry no value to compare (the hint says what is wrong); the example ran
    if "got:" not in stdout:
        return "the example printed no 'got:' line"
    shown = stdout[stdout.rindex("got:") + len("got:"):]
    if "no exception" in got:
        return None if "no exception" in shown else f"expected 'no exception', the example shows {shown.strip()[:200]!r}"
    want = numbers(got.split("...")[0])
    have = numbers(shown)
    # Bytes counted by tracemalloc differ a little from one interpreter to another (what
    # else was allocated meanwhile): as close as the memory checks' own allowance.
    rtol, atol = (0.05, 65536.0) if got.endswith("bytes") or got.endswith("bytes'") else (2e-3, 2e-4)
    if not want:
        text = got.strip("'\"")
        return None if text in shown else f"expected {text!r} in what the example prints: {shown.strip()[:300]!r}"
    for j in range(len(have) - len(want) + 1):
        if np.allclose(have[j : j + len(want)], want, rtol=rtol, atol=atol, equal_nan=True):
            return None
    return f"the example prints {shown.strip()[:300]!r}, which does not show Got {got[:200]!r}"


def replay(script: str, cwd: Path, timeout: float = 120) -> tuple[int, str, str]:
    """Run the pasted text with `python -` in the submission's directory."""
    try:
        proc = subprocess.run([sys.executable, "-"], input=script, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        return -1, "", f"timeout after {timeout} s"
    return proc.returncode, proc.stdout, proc.stderr


def replay_results(results: Path, submission: Path) -> list[Replay]:
    """Every failing check's example in one results.json, replayed in `submission`."""
    data = json.loads(results.read_text())
    jobs = []
    for test in data.get("tests", []):
        if test.get("status") != "failed":
            continue
        message = str(test.get("output", ""))
        script = example(message)
        if script is not None:
            jobs.append((str(test.get("name")), message, script))
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda job: replay(job[2], submission), jobs))
    return [Replay(submission.name, name, message, script, *run) for (name, message, script), run in zip(jobs, runs)]


def first_examples(out_root: Path, submissions: Path, names: Iterable[str], groups: dict[str, frozenset[str]]) -> list[Replay]:
    """For each submission: the example of its first failing check in one of its expected
    groups (any failing check if none), replayed. Reads the batch grade's results.json
    files under `out_root` (shards included); one fresh interpreter per submission."""
    jobs = []
    for name in names:
        found = sorted(out_root.rglob(f"{name}/results.json"))  # shards and trusted/walled parts included
        if not found:
            continue
        failing = [t for t in json.loads(found[0].read_text()).get("tests", []) if t.get("status") == "failed"]
        failing.sort(key=lambda t: not (set(t.get("tags", [])) & groups.get(name, frozenset())))
        for test in failing:
            message = str(test.get("output", ""))
            script = example(message)
            if script is not None:
                jobs.append((name, str(test.get("name")), message, script))
                break
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda job: replay(job[3], submissions / job[0]), jobs))
    return [Replay(name, check, message, script, *run) for (name, check, message, script), run in zip(jobs, runs)]


def main(argv: list[str]) -> int:
    out, submissions = Path(argv[0]), Path(argv[1])
    bad = 0
    for results in sorted(out.glob("*/results.json")):
        for r in replay_results(results, submissions / results.parent.name):
            why = r.problem()
            print(f"{r.submission}: {r.check}: {'reproduces' if why is None else 'DOES NOT REPRODUCE: ' + why}")
            bad += why is not None
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

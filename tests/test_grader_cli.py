"""`python -m spec grade` end to end, as instructors and Gradescope run it (subprocesses).

Kept fast: the quick profile, small submissions, `--isolation none` wherever isolation is
not what the test is about (the zoo grades hostile submissions under isolation). Full
marks on the reference, the three reports agreeing with each other and class batches are
tested through the documented commands, in tests/test_docs_commands.py.
"""

from __future__ import annotations

import json
import shlex
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

try:
    from test_grader_rubric import gradescope_problems
except ImportError:  # tests/ imported as a package
    from tests.test_grader_rubric import gradescope_problems

ROOT = Path(__file__).resolve().parent.parent
BUGGY = ROOT / "examples" / "buggy-submission"
GOOD = "from reference.memoization import Tensor, KVCache, enable_kv_cache, disable_kv_cache\n"
BROKEN = "import numpy as np\n\n\ndef helper():\n    return 1 / 0\n\n\nhelper()  # a student's leftover debugging call\n"


def grade(*args: str | Path, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spec", "grade", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def loose(directory: Path, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "memoization.py").write_text(source)
    return directory


def results(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


def scores(data: dict[str, Any]) -> list[tuple[str, float, float, str]]:
    return [(t["name"], t["score"], t["max_score"], t["status"]) for t in data["tests"]]


# -- exit code 2: the grader could not run ----------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    (d / "empty").mkdir()
    (d / "bad-group.toml").write_text("[groups]\ngets = 10\n")
    (d / "bad-clause.toml").write_text('[groups]\nget = 10\n[clauses."KV-GET-9"]\nweight = 2\n')
    (d / "bad-check.toml").write_text('[groups]\nget = 10\n[checks."test_no_such_check"]\nvisibility = "hidden"\n')
    (d / "not-toml.toml").write_text("[groups\n")
    return d


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["no-such-dir"], "'no-such-dir' does not exist"),
        (["empty"], "no cache module under empty"),
        (["--profile", "fast"], "invalid choice: 'fast'"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--seed", "x"], "invalid int value: 'x'"),
        (["--fail-under", "-5"], "--fail-under must be"),
        (["--tensor", "tensor.Tensor"], "--tensor takes dotted.module:ClassName"),
        (["--isolation", "thread"], "invalid choice: 'thread'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--rubric", "bad-group.toml"], "unknown group 'gets'"),
        (["--rubric", "bad-clause.toml"], "unknown clause 'KV-GET-9'"),
        (["--rubric", "not-toml.toml"], "is not valid TOML"),
        (["--rubric", "missing.toml"], "cannot read rubric 'missing.toml'"),
        (["--rubric", "bad-check.toml"], "unknown check 'test_no_such_check'"),
        (["empty", "--module", "tinytorch.perf.memoization"], "module 'tinytorch.perf.memoization' not found"),
        (["--groups", "get,gets"], "--groups takes groups of the spec, comma-separated (construction, update"),
        (["--groups", ","], "--groups takes groups of the spec"),
    ],
)
def test_usage_errors_exit_2_with_one_line(workdir: Path, args: list[str], fragment: str) -> None:
    proc = grade(*args, "--out", "out", cwd=workdir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m spec grade: error: "), proc.stderr
    assert fragment in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (workdir / "out" / "results.json").exists()


@pytest.mark.parametrize("argv", [[], ["grades"]])
def test_python_m_spec_without_the_grade_command(argv: list[str], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "spec", *argv], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "usage: python -m spec grade" in proc.stderr and "Traceback" not in proc.stderr


# -- graded runs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def buggy_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]]:
    d = tmp_path_factory.mktemp("buggy")
    runs = {}
    for name, extra in (("jobs2", ["--jobs", "2", "--fail-under", "100"]), ("jobs1", ["--jobs", "1", "--fail-under", "10"])):
        proc = grade(BUGGY, "--profile", "quick", "--isolation", "none", "--out", name, *extra, cwd=d)
        runs[name] = (proc, results(d / name), d / name)
    return runs


def test_buggy_submission_below_fail_under_exits_1(buggy_runs: dict[str, Any]) -> None:
    proc, data, out = buggy_runs["jobs2"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "below --fail-under 100: buggy-submission" in proc.stdout
    assert gradescope_problems(data) == []
    assert 0 < data["score"] < 100
    failed = {t["tags"][-1] for t in data["tests"] if t["status"] == "failed"}
    assert {"get", "reset"} <= failed
    # KV-MOD-8 measures nothing for a cache without generation(): not scored, its points stay in its group
    assert not any(t["name"].endswith("_outside_the_generation_scope_is_original_and_leaves_cache") for t in data["tests"])
    assert "(KV-MOD-8) does not apply (the cache has no generation() scope" in data["output"]
    model = [t for t in data["tests"] if t["tags"][-1] == "model"]
    assert sum(t["max_score"] for t in model) == pytest.approx(10.31, abs=0.02)
    report = (out / "report.md").read_text()
    assert "Minimal example (paste it into a file, or into `python -`, in your submission's directory):" in report
    assert "```python\n# ---- kvspec minimal example ----\nimport numpy as np\n" in report
    assert "from tinytorch.perf.memoization import KVCache" in report


def test_groups_grades_only_the_groups_asked_for(tmp_path: Path) -> None:
    """--groups get,memory: the import check and those two groups run; the score is out of their points."""
    proc = grade(BUGGY, "--profile", "quick", "--isolation", "none", "--groups", "get,memory", "--out", "out", cwd=tmp_path)
    data = results(tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {t["tags"][-1] for t in data["tests"]} == {"import", "get", "memory"}
    assert sum(t["max_score"] for t in data["tests"]) == pytest.approx(18)
    assert data["score"] == pytest.approx(8)  # memory's 8; get fails (the buggy submission's get bug)
    assert "only get, memory (--groups)" in (tmp_path / "out" / "report.md").read_text()


def test_a_reader_that_goes_away_stops_the_console_not_the_grading(tmp_path: Path) -> None:
    """`python -m spec grade class/ | head -n 1`: every report is still written, exit 0, no traceback."""
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "memoization.py").write_text(GOOD)
    command = (f"{shlex.quote(sys.executable)} -m spec grade a b c --profile quick --isolation none --groups memory "
               "--out out | head -n 1; exit ${PIPESTATUS[0]}")
    proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.stdout.count("\n") == 1
    for name in ("a", "b", "c"):
        assert results(tmp_path / "out" / name)["score"] == 8
    assert (tmp_path / "out" / "gradebook.csv").is_file()


def test_at_or_above_fail_under_exits_0(buggy_runs: dict[str, Any]) -> None:
    proc, data, _ = buggy_runs["jobs1"]
    assert data["score"] >= 10 and proc.returncode == 0, proc.stdout + proc.stderr


def test_scores_are_identical_with_any_jobs(buggy_runs: dict[str, Any]) -> None:
    (_, one, _), (_, two, _) = buggy_runs["jobs1"], buggy_runs["jobs2"]
    assert json.dumps(scores(one)) == json.dumps(scores(two))
    assert one["score"] == two["score"]
    assert [t["output"] for t in one["tests"]] == [t["output"] for t in two["tests"]]


def test_import_failure_is_a_graded_zero_with_the_traceback(tmp_path: Path) -> None:
    loose(tmp_path / "broken", BROKEN)
    start = time.monotonic()
    proc = grade("broken", "--profile", "quick", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = results(tmp_path / "out")
    assert gradescope_problems(data) == []
    assert data["score"] == 0
    (imp,) = [t for t in data["tests"] if "import" in t["tags"]]
    assert "ZeroDivisionError" in imp["output"] and "Traceback" in imp["output"] and "helper()" in imp["output"]
    others = [t for t in data["tests"] if "import" not in t["tags"]]
    assert others and all("could not be loaded" in t["output"] for t in others)
    assert "ZeroDivisionError" in (tmp_path / "out" / "report.md").read_text()
    assert time.monotonic() - start < 60  # the other checks are not run one by one


# -- a grader fault is exit 2, never the student's score -----------------------------------

# On PYTHONPATH (which the grader's runs and their workers inherit), this breaks only the
# isolated worker, before it can import the submission: a broken grading environment.
BREAKS_THE_WORKER = """\
import os, sys
def broken(*args):
    sys.stderr.write("simulated: the grading worker cannot start\\n")
    sys.stderr.flush()
    os._exit(1)
if sys.orig_argv[1:3] == ["-m", "spec.isolation.worker"]:  # a worker spawned per check
    broken()
if "spec.isolation.forkserver" in sys.orig_argv:  # the workers a fork server forks
    import spec.isolation.worker
    spec.isolation.worker.serve = broken
"""


def test_a_worker_that_fails_before_importing_the_submission_is_a_grader_fault(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BREAKS_THE_WORKER)
    loose(tmp_path / "good", GOOD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    # process: the sitecustomize on PYTHONPATH reaches the workers (the sandbox shows them nothing of tmp_path)
    proc = grade("good", "--profile", "quick", "--isolation", "process", "--out", "out", cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("python -m spec grade: error: internal error, a grader fault and not the submission's: ")
    assert "exit code 1 during starting the worker" in lines[0] and "simulated: the grading worker cannot start" in lines[0]
    assert "no score was written" in lines[0] and "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "out" / "results.json").exists() and not (tmp_path / "out" / "report.md").exists()


def test_course_ci_reports_a_grader_fault_as_an_internal_error_not_a_score(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BREAKS_THE_WORKER)
    loose(tmp_path / "good", GOOD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVSPEC_", "PYTEST_", "HYPOTHESIS"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "spec.checks.test_import", "-p", "no:cacheprovider", "-q",
         "--kvspec-submission=good", "--kvspec-isolation=process", "--kvspec-fail-under=0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr  # pytest's internal error, though 0 points pass fail-under 0
    assert "kvspec: internal error, a grader fault and not the submission's; not scored" in proc.stdout


def test_a_submission_that_kills_its_process_at_import_is_its_own_crash(tmp_path: Path) -> None:
    loose(tmp_path / "dies", "import os\n\nos._exit(3)\n")
    proc = grade("dies", "--profile", "quick", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = results(tmp_path / "out")
    assert gradescope_problems(data) == [] and data["score"] == 0
    (imp,) = [t for t in data["tests"] if "import" in t["tags"]]
    assert "your code's process exit: exit code 3 during importing the submission" in imp["output"]


HOSTILE = '''
import json, os

OUT = {out!r}
os.makedirs(OUT, exist_ok=True)
with open(os.path.join(OUT, "results.json"), "w") as f:
    json.dump({{"score": 100, "tests": [{{"name": "all", "score": 100, "max_score": 100}}]}}, f)
with open(os.path.join(OUT, "pwned.txt"), "w") as f:
    f.write("written by the submission")

# Find the grader's verdict stream on any process's command line (an ancestor's, or under a
# fork server a sibling's) and forge passes into it.
for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
    try:
        args = open(f"/proc/{{pid}}/cmdline", "rb").read().split(b"\\0")
    except OSError:
        continue
    for arg in args:
        name, _, value = arg.decode(errors="replace").partition("=")
        if name == "--kvspec-grader-stream":
            with open(value, "a") as f:
                verdict = {{"nodeid": "test_import.py::test_module_imports_and_defines_the_api",
                           "name": "test_module_imports_and_defines_the_api", "clauses": ["KV-IMP-1"],
                           "group": "import", "passed": True, "message": "", "duration": 0.0}}
                f.write(json.dumps({{"verdict": verdict, "mac": "0" * 64}}) + "\\n")
        if name == "--kvspec-results":
            with open(value, "w") as f:
                f.write("[]")


raise ImportError("nothing to see here")  # so the import check fails: its forged pass must not count
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, as an attacker on Linux would")
def test_a_submission_cannot_plant_or_forge_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    loose(tmp_path / "hostile", HOSTILE.format(out=str(out)))
    # process: the weakest wall, where the verdicts' authentication is what stops the forgery
    proc = grade("hostile", "--profile", "quick", "--isolation", "process", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "report.md", "results.json"]
    data = results(out)
    assert gradescope_problems(data) == []
    assert data["score"] == 0 and len(data["tests"]) > 1
    (imp,) = [t for t in data["tests"] if "import" in t["tags"]]
    assert imp["status"] == "failed" and "nothing to see here" in imp["output"]


def test_the_whole_run_has_a_hard_time_limit(tmp_path: Path) -> None:
    loose(tmp_path / "hangs", GOOD.replace("KVCache, ", "") + "\n\nclass KVCache:\n    def __init__(self, *args):\n        while True:\n            pass\n")
    start = time.monotonic()
    proc = grade("hangs", "--profile", "quick", "--time-limit", "8", "--out", "out", cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = results(tmp_path / "out")
    assert gradescope_problems(data) == []
    cache_checks = [t for t in data["tests"] if {"construction", "update", "get"} & set(t["tags"])]
    assert cache_checks and all(t["score"] == 0 for t in cache_checks)
    assert "time limit of 8 s" in data["output"]
    assert elapsed < 60, elapsed


DAEMON = '''
import os, time

if os.fork() == 0:
    os.setsid()  # leaves the worker's session: the worker's own clean-up cannot find it
    if os.fork() == 0:
        with open({pidfile!r}, "w") as f:
            f.write(str(os.getpid()))
        while True:
            with open({marker!r}, "a") as f:
                f.write("x")
            time.sleep(0.05)
    os._exit(0)
for _ in range(200):  # wait until the daemon runs, so the grader has something to find
    if os.path.exists({pidfile!r}):
        break
    time.sleep(0.025)
raise ImportError("the daemon is started; nothing else to grade")
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the subreaper is Linux-only")
def test_processes_left_behind_are_killed_before_the_reports(tmp_path: Path) -> None:
    pidfile, marker = tmp_path / "daemon.pid", tmp_path / "marker"
    loose(tmp_path / "daemon", DAEMON.format(pidfile=str(pidfile), marker=str(marker)))
    try:
        proc = grade("daemon", "--profile", "quick", "--isolation", "process", "--out", "out", cwd=tmp_path)  # its pidfile is in tmp_path
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert pidfile.exists(), "the daemon never started"
        size = marker.stat().st_size
        time.sleep(0.5)
        assert marker.stat().st_size == size, "the daemon outlived the grader"
        assert "left running after the run were killed" in (tmp_path / "out" / "report.md").read_text()
    finally:
        if pidfile.exists() and pidfile.read_text():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass

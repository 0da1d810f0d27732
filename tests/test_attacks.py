"""The attacks of issue 9 on the grader itself, graded through the real CLI, once per isolation mode.

One batch per mode (quick profile, one xdist worker, the groups in GROUPS): the shared twin first (the bug
alone), then every attack of tests/zoo/hostile.py's ATTACKS, each followed by the next, and
the twin again last. The grader is a throw-away copy of this repository's `spec` and
`reference` (the .pyc attack writes into it), run with `python -m spec grade` from it.
For each attack the test wants: its twin's score and verdicts (the hang: 0), complete
reports, no evidence that it got through (tests/zoo/hostile.py's ATTACK_EVIDENCE), and the
submission after it graded exactly as the twin (nothing carried over). A batch holding a
hang, a submission that breaks the grader's cleanup (the flood) and honest ones is part of
the same run: the honest ones' reports must be written and right.

`process` isolation is documented as unprotected (docs/threat-model.md): there, the attacks
in PROCESS_MODE_GETS_THROUGH may get through and are reported, not asserted; every other one
must hold. Modes the grader does not offer yet are skipped; on CI (env CI set) a mode the
grader offers must run, never be skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.zoo.hostile import ATTACK_ARMED_MARKER, ATTACK_EVIDENCE, ATTACK_INSTALL_MARKER, ATTACK_TMP_MARKER, ATTACKS  # noqa: E402
from tests.zoo.runner import parse_results, surviving_daemons  # noqa: E402
from tests.zoo.variants import materialize, registry  # noqa: E402
from spec.grader.safe_io import remove_tree  # noqa: E402

TWIN = "memory_mb_as_10_6"
# Same user, same process table: a submission can stop the grader (a permanent SIGSTOP would hang it).
PROCESS_MODE_GETS_THROUGH = {"attack_stops_grader"}
PROCESS_MODE_NOT_RUN = {"attack_kills_grader"}  # gets through there, and would end the batch (then: --resume)
# Measured in `user` mode on the loaded 2-core VM, two batches: a few attacks (not the same
# ones twice: leftover, pyc, fifo; then fifo, kills, floods) ended 1.3 to 8 points BELOW the
# twin, never above, the submission after each graded exactly as the twin. Cause not
# established (checks of the attacker lost under load, or the uid's limits while its daemon
# runs). There, an attack must not end above the twin; below is reported, not asserted.
AT_MOST_IN = {"user"}
IMPORT_TIMEOUT = "20"  # seconds: the hanging import costs this, not the default 30 (a loaded machine needs more than 8)
TIME_LIMIT = "1200"  # seconds per submission: a loaded machine must not turn an attack's CPU use into lost points
MODES = ("process", "sandbox", "user")
# The groups graded in the attack batches (--groups): the twin's bug (memory) and the cache
# checks around it. The attacks act at import and through daemons during the whole run, not
# through any one check, and a third of the checks makes each batch three times faster.
GROUPS = "update,get,reset,memory"


def offered_modes() -> tuple[str, ...]:
    from spec.grader.cli import parser

    for action in parser()._actions:
        if "--isolation" in action.option_strings:
            return tuple(action.choices or ())
    return ()


def install_copy(dest: Path) -> Path:
    """A throw-away copy of the grader (spec/ and reference/, no bytecode), marked for the .pyc attack."""
    for package in ("spec", "reference"):
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / ATTACK_INSTALL_MARKER).write_text("a copy of the grader made by tests/test_attacks.py\n")
    return dest


def evidence(submission: Path) -> str:
    found = [p.read_text(errors="replace").strip() for p in submission.rglob(ATTACK_EVIDENCE) if p.is_file()]
    return "; ".join(found)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the attacks read /proc, as an attacker on Linux would")
@pytest.mark.parametrize("mode", MODES)
def test_attacks_on_the_grader(mode: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if mode not in offered_modes():
        pytest.skip(f"this grader does not offer --isolation {mode} yet")
    variants = registry()
    install = install_copy(tmp_path / "install")
    attacks = [v.name for v in ATTACKS if not (mode == "process" and v.name in PROCESS_MODE_NOT_RUN)]
    order = [TWIN] + attacks + [TWIN + "_again"]
    dirs = []
    for name in order:
        dirs.append(materialize(variants[TWIN if name == TWIN + "_again" else name], tmp_path / "subs" / name))
        (dirs[-1] / ATTACK_ARMED_MARKER).write_text("tests/test_attacks.py: this submission's payload may act\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVSPEC_", "PYTEST_", "HYPOTHESIS_", "PYTHON"))}
    env["PYTHONPATH"] = str(install)
    env["KVSPEC_IMPORT_TIMEOUT"] = IMPORT_TIMEOUT
    env["KVSPEC_CALL_TIMEOUT"] = "60"  # the attacks are the subject, not the machine's load: no call may
    env["KVSPEC_CHECK_BUDGET"] = "600"  # lose its verdict to a timeout on a loaded 2-core machine
    # The grader's TMPDIR: the payloads act only in a marked one, never in /tmp itself. Not under
    # tmp_path (0700): in `user` mode the unprivileged uid must traverse it to the staged submission.
    tmp = Path(tempfile.mkdtemp(prefix="kvspec-zoo-attack-tmp-"))
    os.chmod(tmp, 0o711)
    request.addfinalizer(lambda: remove_tree(tmp))
    (tmp / ATTACK_TMP_MARKER).write_text("tests/test_attacks.py: hostile payloads may act here\n")
    env["TMPDIR"] = str(tmp)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "spec", "grade", *map(str, dirs), "--profile", "quick", "--jobs", "1", "--groups", GROUPS,
           "--isolation", mode, "--out", str(out), "--quiet", "--time-limit", TIME_LIMIT]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - start
    daemons = surviving_daemons(tmp_path / "subs")
    if proc.returncode == 2 and "not available" in proc.stderr and not os.environ.get("CI"):
        pytest.skip(f"--isolation {mode} is not available on this machine: {proc.stderr.strip()[:300]}")

    graded = {}
    problems = []
    for name in order:
        sub = out / name
        for report in ("results.json", "junit.xml", "report.md"):
            if not (sub / report).is_file():
                problems.append(f"{name}: no {report}")
        graded[name] = parse_results(name, sub / "results.json") if (sub / "results.json").is_file() else None
    twin = graded[TWIN]
    assert twin is not None and not twin.problems, f"the twin was not graded\n{proc.stdout}\n{proc.stderr}"
    # The yardstick itself must be right (its one bug, nothing else), or every comparison is vacuous.
    assert twin.failed_groups() == {"memory"}, f"the twin failed {sorted(twin.failed_groups())}, not just memory: " + "; ".join(
        f"{t.name}: {t.output[:300]}" for t in twin.failing()[:3])
    lines = [f"--isolation {mode}: {len(order)} submissions in {wall:.0f} s (exit {proc.returncode})",
             f"  {TWIN} (twin): {twin.score:g}"]
    for name in order[1:]:
        g = graded[name]
        expected = next((v.expect_score for v in ATTACKS if v.name == name and v.expect_score is not None), twin.score)
        got_through = evidence(tmp_path / "subs" / name)
        reasons = []
        if g is None:
            reasons.append("not graded")
        else:
            below = g.score < expected - 0.005
            if abs(g.score - expected) > 0.005 and not (below and mode in AT_MOST_IN and name != TWIN + "_again"):
                reasons.append(f"score {g.score:g}, not {expected:g}")
            elif below:
                lines.append(f"  ({name} lost {expected - g.score:.2f} of its own points: reported, not asserted in {mode} mode)")
            passed_more = [n for n, ok in g.statuses().items() if ok and not twin.statuses().get(n, False)]
            if passed_more or (expected == twin.score and g.statuses() != twin.statuses() and mode not in AT_MOST_IN):
                reasons.append(f"verdicts differ from the twin's (passes it does not: {passed_more[:5]})")
            reasons += g.problems
        if got_through:
            reasons.append(f"got through: {got_through[:300]}")
        held = not reasons
        allowed = mode == "process" and name in PROCESS_MODE_GETS_THROUGH
        lines.append(f"  {name}: {g.score if g else float('nan'):g} (expected {expected:g}): "
                     f"{'held' if held else ('GOT THROUGH (expected in process mode)' if allowed else 'FAILED')}"
                     f"{'' if held else ': ' + '; '.join(reasons)}")  # fmt: skip
        if not held and not allowed:
            problems.append(f"{name}: {'; '.join(reasons)}")
    for name in sorted(set(v.name for v in ATTACKS) - set(order)):
        lines.append(f"  {name}: not run in this mode (it gets through here and would end the batch)")
    if daemons:
        problems.append(f"processes outlived the grader: {daemons}")
    if proc.returncode != 0:
        problems.append(f"the grader exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    text = "\n".join(lines)
    print("\n" + text)
    if os.environ.get("KVSPEC_ATTACK_TABLE"):
        with open(os.environ["KVSPEC_ATTACK_TABLE"], "a") as f:
            f.write(text + "\n")
    assert not problems, "\n".join(problems) + "\n\n" + text


def test_resume_grades_only_what_is_not_finished(tmp_path: Path) -> None:
    """An interrupted batch: --resume grades the rest, not the finished; other options are refused."""
    good = "from reference.memoization import Tensor, KVCache, enable_kv_cache, disable_kv_cache\n"
    subs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "memoization.py").write_text(good)
        subs.append(name)
    base = [sys.executable, "-m", "spec", "grade", *subs, "--profile", "quick", "--isolation", "none", "--out", "out", "--quiet"]
    first = subprocess.run(base, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    # Pretend the batch stopped after "a": forget "b" and its reports.
    (tmp_path / "out/.kvspec-progress/done/b.json").unlink()
    shutil.rmtree(tmp_path / "out/b")
    stamp = (tmp_path / "out/a/results.json").stat().st_mtime_ns
    resumed = subprocess.run(base + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "grading a " not in resumed.stdout and "grading b" in resumed.stdout, resumed.stdout
    assert json.loads((tmp_path / "out/b/results.json").read_text())["score"] == 100
    assert (tmp_path / "out/a/results.json").is_file() and (tmp_path / "out/a/results.json").stat().st_mtime_ns >= stamp
    rows = {line.split(",")[0]: line for line in (tmp_path / "out/gradebook.csv").read_text().splitlines()[1:]}
    assert set(rows) == {"a", "b"} and all(",100,100," in row for row in rows.values()), rows
    refused = subprocess.run(base[:-1] + ["--seed", "7", "--quiet", "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--resume" in refused.stderr and "seed=" in refused.stderr, refused.stderr

"""The zoo, graded through the real grader command: the evidence that its verdicts are right.

Every variant (tests/zoo: a correct base submission plus named edits) is materialized
into a temporary directory and graded by `python -m spec grade DIR1 DIR2 ... --profile
quick --jobs 1` in batch mode, two invocations at once. Then:

- the base and every correct alternative get full marks (zero false failures);
- the honest variants (bugs, correct designs) are graded in-process (`--isolation none`),
  the hostile ones and their twins behind the wall (the default isolation);
- every bug fails at least one check in each of its expected groups;
- every hostile submission ends with exactly its twin's score (or its stated score; never
  above it for one that sabotages itself), the grader exits 0, within the time bound,
  with no forged report surviving;
- grading a few submissions again behind the wall, and with another --jobs, gives identical
  verdicts (for the honest ones: in-process and behind the wall agree);
- every bug's minimal example (of its first failing check in an expected group), pasted
  verbatim into `python -` in its directory, shows the failure (tests/zoo/replay.py).

The summary table is printed (run with -s, or see the failure message) and written to
$KVSPEC_ZOO_TABLE if set. `nox -s zoo` does the same with the default profile.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.zoo.replay import first_examples  # noqa: E402
from tests.zoo.runner import PROBLEMS, grade, materialize_all, run_zoo  # noqa: E402
from tests.zoo.variants import Edit, Variant, ZooError, apply, by_kind, check_registry, diff, registry  # noqa: E402

PROFILE = os.environ.get("KVSPEC_ZOO_PROFILE", "quick")
# Two grader invocations at once, one xdist worker each: on 2 cores this is the fastest
# way through many submissions (a hung hostile one holds one invocation, not both).
JOBS = int(os.environ.get("KVSPEC_ZOO_JOBS", "1"))
SHARDS = int(os.environ.get("KVSPEC_ZOO_SHARDS", "2"))
OTHER_JOBS = 2 if JOBS == 1 else 1
# Graded a second time (same --jobs) and a third (another --jobs): verdicts must not change.
DETERMINISM = ("base", "closure_over_loop_variable", "hostile_lying_arrays", "hostile_os_exit_in_reset")


def test_registry_is_big_enough_and_applies() -> None:
    variants = registry()
    check_registry(variants)
    assert len(by_kind(variants.values(), "bug")) >= 30
    assert len(by_kind(variants.values(), "alternative")) >= 5 + 1  # + the base itself
    assert len(by_kind(variants.values(), "hostile")) >= 8
    for v in variants.values():
        if v.name != "base":
            assert diff(v), f"{v.name} does not change the base"


def test_an_edit_that_does_not_match_the_base_exactly_once_is_an_error() -> None:
    missing = Variant("x", "bug", "", (Edit("tinytorch/perf/memoization.py", "no such text", ""),), frozenset({"get"}))
    twice = Variant("y", "bug", "", (Edit("tinytorch/perf/memoization.py", "self.seq_pos", ""),), frozenset({"get"}))
    for v in (missing, twice):
        with pytest.raises(ZooError):
            apply(v)


def test_show_and_materialize(tmp_path: Path) -> None:
    shown = subprocess.run([sys.executable, "-m", "tests.zoo", "show", "first_token_never_cached"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert "+        if seq_len > 1 or cache.seq_pos == 0:" in shown
    subprocess.run([sys.executable, "-m", "tests.zoo", "materialize", "layout_2025", str(tmp_path / "s")], cwd=ROOT, check=True,
                   capture_output=True)
    assert (tmp_path / "s/tinytorch/generation/kv_cache.py").is_file()
    assert not (tmp_path / "s/tinytorch/perf").exists()


def test_zoo(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("zoo")
    verdicts, run, text = run_zoo(PROFILE, JOBS, SHARDS, workdir=root)

    # Determinism: the same submissions again (same --jobs), and with another --jobs, at once, all
    # behind the wall: the honest ones were graded in-process the first time, so this also shows
    # that the isolation mode does not change a verdict.
    variants = registry()
    again = materialize_all([variants[n] for n in DETERMINISM], root / "again")
    with ThreadPoolExecutor(2) as pool:
        repeat_f = pool.submit(grade, again, root / "out-again", PROFILE, JOBS)
        other_f = pool.submit(grade, again, root / "out-other-jobs", PROFILE, OTHER_JOBS)
        repeat, other_jobs = repeat_f.result(), other_f.result()
    unstable = []
    for n in DETERMINISM:
        first = run.graded[n]
        for label, r in (("again", repeat), (f"--jobs {OTHER_JOBS}", other_jobs)):
            g = r.graded[n]
            if g.score != first.score or g.statuses() != first.statuses():
                changed = sorted(k for k in set(g.statuses()) | set(first.statuses()) if g.statuses().get(k) != first.statuses().get(k))
                unstable.append(f"{n} ({label}): {first.score} -> {g.score}, checks {changed}")
    text += "\n\nDeterminism ({0} graded again behind the wall with --jobs {1}, and with --jobs {2}): {3}".format(
        ", ".join(DETERMINISM), JOBS, OTHER_JOBS, "identical" if not unstable else "; ".join(unstable))
    text += f" ({max(repeat.wall, other_jobs.wall):.0f} s more)"
    # Every bug's minimal example, pasted verbatim into `python -` in its directory, shows the failure.
    bugs = {n: v.expect_fail_groups for n, v in variants.items() if v.kind == "bug"}
    replays = first_examples(root / "out", root / "submissions", sorted(bugs), bugs)
    not_replayed = [f"{r.submission}: {r.check}: {why}\n{r.script}" for r in replays if (why := r.problem()) is not None]
    without = sorted(set(bugs) - {r.submission for r in replays})
    text += (f"\n\nMinimal examples replayed (one per bug, pasted into `python -`): {len(replays) - len(not_replayed)} of "
             f"{len(replays)} show the failure; bugs without an example: {without or 'none'}")
    print("\n" + text)
    if os.environ.get("KVSPEC_ZOO_TABLE"):
        Path(os.environ["KVSPEC_ZOO_TABLE"]).write_text(text + "\n")

    assert set(run.exit_codes) == {0}, f"the grader exited {run.exit_codes}\n{run.stderr[-3000:]}\n{text}"
    assert set(repeat.exit_codes) == set(other_jobs.exit_codes) == {0}
    assert len(run.graded) == len([n for n in variants if not n.startswith("attack_")]), text
    bad = [x for x in verdicts if x.outcome in PROBLEMS]
    bad_twins = [x for x in verdicts if x.variant.kind == "twin" and x.outcome != "caught"]
    assert not bad and not bad_twins, text
    assert not unstable, text
    assert not not_replayed and not without, "\n\n".join(not_replayed) + f"\nwithout an example: {without}"

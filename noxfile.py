"""Sessions: tests, typecheck, coverage, reach, bench, grade, zoo, seeds, mutation (see README.md)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
PYTHON = None  # the interpreter nox runs on: CI has only one


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Our own tests: reference, suite vs reference, meta-tests, the zoo (quick profile)."""
    session.install("-e", ".[dev]")
    session.run("pytest", "-n", "auto", "--durations=15", *session.posargs)  # the slowest, in every CI log


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over reference/, spec/ and bench/."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "reference", "spec", "bench")


@nox.session(python=PYTHON)
def coverage(session: nox.Session) -> None:
    """Branch coverage of reference/ by its tests and the suite; fails under 95%."""
    session.install("-e", ".[dev]")
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", "-p", "no:xdist", "tests/test_reference.py", "spec/checks")
    session.run("coverage", "report", "--fail-under=95", "--show-missing")


@nox.session(python=PYTHON)
def reach(session: nox.Session) -> None:
    """Operation-sequence coverage of the cache state machines: the ordered pairs and triples of
    update / get / advance / reset their histories reach, per profile (docs/zoo.md, "Reach")."""
    session.install("-e", ".")
    session.run("python", "-m", "spec.coverage", *(session.posargs or ["--profile", "quick", "--profile", "default"]))


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Decode benchmark of the reference: figures, never assertions (docs/benchmark.md). ARGS: --quick, --out DIR."""
    session.install("-e", ".[plot,bench]")
    session.run("python", "-m", "bench.decode", *session.posargs)


@nox.session(python=PYTHON)
def bench_grade(session: nox.Session) -> None:
    """Grading-speed benchmark: each isolation mode next to none, worker start, a zoo batch (figures only). ARGS: see python -m bench.grade -h."""
    session.install("-e", ".")
    session.run("python", "-m", "bench.grade", *session.posargs)


@nox.session(python=PYTHON)
def grade(session: nox.Session) -> None:
    """python -m spec grade ARGS in a fresh environment; no ARGS grades the bundled reference."""
    session.install("-e", ".")
    session.run("python", "-m", "spec", "grade", *session.posargs)


@nox.session(python=PYTHON)
def zoo(session: nox.Session) -> None:
    """The zoo (tests/zoo) graded by `python -m spec grade` with the default profile; prints the table (docs/zoo.md).
    ARGS go to `python -m tests.zoo grade`, e.g. --shards 1 --jobs 2, or variant names."""
    session.install("-e", ".")
    session.run("python", "-m", "tests.zoo", "grade", "--profile", "default", *session.posargs)


@nox.session(python=PYTHON)
def seeds(session: nox.Session) -> None:
    """Every zoo bug graded with five seeds in the quick profile: per bug, the seeds that catch it and the
    groups that lost points (docs/zoo.md). A benchmark: about (bugs x 5) gradings."""
    session.install("-e", ".")
    session.run("python", "-m", "tests.zoo", "seeds", *(session.posargs or ["--seeds", "5", "--profile", "quick"]))


@nox.session(python=PYTHON)
def mutation(session: nox.Session) -> None:
    """Mutation score of the spec: mutmut over reference/kv_cache.py and reference/memoization.py, with
    spec/checks (quick profile) against the reference as the test command (docs/mutation.md)."""
    import shutil
    from pathlib import Path

    # Not the project itself: `reference` and `spec` must come from mutmut's mutants/ copy.
    session.install("mutmut==3.8.1", "numpy>=1.24", "hypothesis>=6.100", "pytest>=8")
    root = Path(__file__).resolve().parent
    work = Path(session.create_tmp()).resolve() / "mutation"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("reference", "spec"):
        shutil.copytree(root / name, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(root / "tests" / "mutation" / "setup.cfg", work / "setup.cfg")
    session.chdir(work)
    session.run("mutmut", "run", *session.posargs)
    session.run("python", str(root / "tests" / "mutation" / "score.py"), "mutmut", "--markdown", str(work / "mutation-score.md"))

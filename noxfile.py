"""Sessions: tests, typecheck, coverage, bench, grade (see README.md)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
PYTHON = None  # the interpreter nox runs on: CI has only one


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Our own tests: reference, suite vs reference, meta-tests, the zoo (quick profile)."""
    session.install("-e", ".[dev]")
    session.run("pytest", "-n", "auto", *session.posargs)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over reference/ and spec/."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "reference", "spec")


@nox.session(python=PYTHON)
def coverage(session: nox.Session) -> None:
    """Branch coverage of reference/ by its tests and the suite; fails under 95%."""
    session.install("-e", ".[dev]")
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", "-p", "no:xdist", "tests/test_reference.py", "spec/checks")
    session.run("coverage", "report", "--fail-under=95", "--show-missing")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Decode benchmark of the reference: figures, never assertions (docs/benchmark.md). ARGS: --quick, --out DIR."""
    session.install("-e", ".[plot,bench]")
    session.run("python", "-m", "bench.decode", *session.posargs)


@nox.session(python=PYTHON)
def grade(session: nox.Session) -> None:
    """python -m spec grade ARGS in a fresh environment; no ARGS grades the bundled reference."""
    session.install("-e", ".")
    session.run("python", "-m", "spec", "grade", *session.posargs)

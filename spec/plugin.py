"""pytest plugin: choose the implementation under test and the grading profile.

Like array-api-tests chooses its array module: a pytest option or an environment
variable names a submission directory and/or module; with neither, the suite runs
against the bundled reference. Registered as the `kvspec` pytest11 entry point, so a
course repository can run `pytest --pyargs spec.checks --kvspec-submission=.`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from spec import profiles
from spec.discovery import DiscoveryError, Target, find_target
from spec.isolation.driver import Driver
from spec.results import Collector
from spec.session import set_current_driver

# --kvspec-fail-under / --kvspec-rubric: score the run with the rubric (course CI).
pytest_plugins = ["spec.grader.ci"]

REFERENCE = "reference"  # --kvspec-submission=reference: the bundled reference (./reference for a directory of that name)
OPTIONS = {
    # option: (environment variable, help)
    "submission": ("KVSPEC_SUBMISSION", "directory holding the submission; 'reference' for the bundled reference (the default without grading options)"),
    "module": ("KVSPEC_MODULE", "dotted name of the cache module (default: discovered)"),
    "tensor": ("KVSPEC_TENSOR", "Tensor class as dotted.module:Name (default: the module's Tensor)"),
    "profile": ("KVSPEC_PROFILE", "quick | default | thorough (default: default)"),
    "seed": ("KVSPEC_SEED", "seed for the examples (default: 0)"),
    "isolation": ("KVSPEC_ISOLATION", "none (in this process) | process (a killable worker per check) | user | sandbox (docs/threat-model.md)"),
    "forkserver": ("KVSPEC_FORKSERVER", "socket of a fork server behind a wall (set by the grader; default: none, or one of our own for user/sandbox)"),
    "results": ("KVSPEC_RESULTS", "write one verdict per check (clauses, group, message) to this JSON file"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvspec", "KV-cache conformance suite")
    for name, (env, text) in OPTIONS.items():
        group.addoption(f"--kvspec-{name}", dest=f"kvspec_{name}", default=None, help=f"{text}; env {env}")


def option(config: pytest.Config, name: str) -> str | None:
    value = config.getoption(f"kvspec_{name}")
    if value is None:
        value = os.environ.get(OPTIONS[name][0]) or None
    return value  # type: ignore[no-any-return]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kvspec(*clause_ids): the spec clauses a check verifies")
    seed = option(config, "seed")
    try:
        profiles.activate(option(config, "profile") or profiles.DEFAULT_PROFILE, int(seed) if seed else profiles.DEFAULT_SEED)
    except ValueError as exc:
        raise pytest.UsageError(f"kvspec: {exc}") from None
    if option(config, "isolation") in ("process", "user", "sandbox"):
        from spec.isolation.procfs import harden_grader_process

        harden_grader_process()  # workers (same user) cannot ptrace or read this process
    results = option(config, "results")
    if results and not hasattr(config, "workerinput"):
        config.pluginmanager.register(Collector(Path(results)), "kvspec-collector")
    elif results:
        config.pluginmanager.register(Collector(None), "kvspec-annotator")


CHECKS_DIR = Path(__file__).resolve().parent / "checks"


def is_check(item: pytest.Item) -> bool:
    """Is this item one of kvspec's checks (spec/checks), rather than someone else's test?"""
    return CHECKS_DIR in Path(str(item.path)).resolve().parents


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The grading profile and seed go to kvspec's checks only (spec.profiles)."""
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and is_check(item) and getattr(function, "is_hypothesis_test", False):
            profiles.apply(function)


def submission(config: pytest.Config) -> str | None:
    """The submission directory; None for the bundled reference, asked for by name."""
    value = option(config, "submission")
    return None if value in (None, REFERENCE) else value


def make_driver(config: pytest.Config) -> Driver:
    """The driver for one check, as the options say."""
    try:
        target = find_target(submission(config), option(config, "module"), option(config, "tensor"))
    except DiscoveryError as exc:
        raise pytest.UsageError(f"kvspec: {exc}") from None
    isolation = option(config, "isolation") or "none"
    if isolation == "none":
        from spec.isolation.local import LocalDriver

        return LocalDriver(target)
    if isolation in ("process", "user", "sandbox"):
        from spec.isolation.isolated import IsolatedDriver

        forkserver = option(config, "forkserver")
        if forkserver is None and isolation != "process":
            target, forkserver = _own_wall(config, target, isolation)
        return IsolatedDriver(target, forkserver=forkserver)
    raise pytest.UsageError(f"kvspec: --kvspec-isolation must be none, process, user or sandbox, not {isolation!r}")


def _own_wall(config: pytest.Config, target: Target, mode: str) -> tuple[Target, str]:
    """No fork server given (a plain `pytest --kvspec-isolation=sandbox`): start one behind
    a wall for this pytest process, on its first check, killed when the session ends."""
    import shutil
    import tempfile

    from spec.isolation import wall

    own = getattr(config, "_kvspec_wall", None)
    if own is None:
        private = Path(tempfile.mkdtemp(prefix="kvspec-wall-"))
        own = wall.Wall(target, mode, private)
        def stop() -> None:
            own.kill_all()
            shutil.rmtree(private, ignore_errors=True)

        config.add_cleanup(stop)
        setattr(config, "_kvspec_wall", own)
        try:
            own.start()
        except wall.WallError as exc:
            raise pytest.UsageError(f"kvspec: {exc}") from None
    assert own.socket_path is not None
    return own.target, own.socket_path


@pytest.fixture
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    """A driver for this check; also the current driver for state machines."""
    d = make_driver(request.config)
    setattr(request.node, "_kvspec_driver", d)  # results.Collector attaches its captured output to failures
    set_current_driver(d)
    try:
        yield d
    finally:
        set_current_driver(None)
        d.close()

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
from spec.discovery import DiscoveryError, find_target
from spec.isolation.driver import Driver
from spec.results import Collector
from spec.session import set_current_driver

# --kvspec-fail-under / --kvspec-rubric: score the run with the rubric (course CI).
pytest_plugins = ["spec.grader.ci"]

OPTIONS = {
    # option: (environment variable, help)
    "submission": ("KVSPEC_SUBMISSION", "directory holding the submission (default: the bundled reference)"),
    "module": ("KVSPEC_MODULE", "dotted name of the cache module (default: discovered)"),
    "tensor": ("KVSPEC_TENSOR", "Tensor class as dotted.module:Name (default: the module's Tensor)"),
    "profile": ("KVSPEC_PROFILE", "quick | default | thorough (default: default)"),
    "seed": ("KVSPEC_SEED", "seed for the examples (default: 0)"),
    "isolation": ("KVSPEC_ISOLATION", "none (in this process) | process (a killable worker per check)"),
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
        profiles.load(option(config, "profile") or profiles.DEFAULT_PROFILE, int(seed) if seed else profiles.DEFAULT_SEED)
    except ValueError as exc:
        raise pytest.UsageError(f"kvspec: {exc}") from None
    if option(config, "isolation") == "process":
        from spec.isolation.isolated import harden_grader_process

        harden_grader_process()  # workers (same user) cannot ptrace or read this process
    results = option(config, "results")
    if results and not hasattr(config, "workerinput"):
        config.pluginmanager.register(Collector(Path(results)), "kvspec-collector")
    elif results:
        config.pluginmanager.register(Collector(None), "kvspec-annotator")


def make_driver(config: pytest.Config) -> Driver:
    """The driver for one check, as the options say."""
    try:
        target = find_target(option(config, "submission"), option(config, "module"), option(config, "tensor"))
    except DiscoveryError as exc:
        raise pytest.UsageError(f"kvspec: {exc}") from None
    isolation = option(config, "isolation") or "none"
    if isolation == "none":
        from spec.isolation.local import LocalDriver

        return LocalDriver(target)
    if isolation == "process":
        from spec.isolation.isolated import IsolatedDriver

        return IsolatedDriver(target)
    raise pytest.UsageError(f"kvspec: --kvspec-isolation must be none or process, not {isolation!r}")


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

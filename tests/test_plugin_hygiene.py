"""The kvspec pytest plugin is installed for every pytest run in its environment: it must
change nothing in a run that does not ask for it, and refuse to score without a submission.

Each test runs pytest in a subprocess from an unrelated directory, with plugin autoloading
on (as a course's or anyone's test run would): cheap, no kvspec check runs in most.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Another project's tests, with its own Hypothesis profile: five examples, its database on,
# no forced seed. The kvspec plugin is loaded (autoload) but not asked for.
UNRELATED = '''\
import hypothesis.core
from hypothesis import given, settings, strategies as st

settings.register_profile("five", max_examples=5)
settings.load_profile("five")
SEEN = []


@given(st.integers())
def test_draws(x):
    SEEN.append(x)


def test_ran_five_with_its_own_settings(request):
    assert request.config.pluginmanager.has_plugin("kvspec"), "the kvspec plugin was not even loaded"
    assert len(SEEN) == 5, f"ran {len(SEEN)} examples, not the profile's 5"
    assert settings().max_examples == 5 and settings().database is not None
    assert hypothesis.core.global_force_seed is None
'''


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVSPEC_", "PYTEST_", "HYPOTHESIS"))}
    env.pop("CI", None)  # Hypothesis' own ci profile would change the settings under test
    return env


def pytest_run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", *args],
        cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def unrelated_suite(tmp_path: Path) -> Path:
    (tmp_path / "test_other.py").write_text(UNRELATED)
    return tmp_path


def test_an_unrelated_suite_keeps_its_own_hypothesis_settings(tmp_path: Path) -> None:
    proc = pytest_run(unrelated_suite(tmp_path), "test_other.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_an_unrelated_suite_in_the_same_run_as_the_checks_keeps_its_settings(tmp_path: Path) -> None:
    """kvspec's profile (quick: 12 examples) goes to kvspec's checks only, even in one run."""
    proc = pytest_run(
        unrelated_suite(tmp_path), "--kvspec-submission=reference", "--kvspec-profile=quick",
        "test_other.py", "--pyargs", "spec.checks.test_shapes", "--hypothesis-show-statistics",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "settings.max_examples=12" in proc.stdout  # the checks ran with the grading profile
    assert "settings.max_examples=5" in proc.stdout  # the other suite with its own


@pytest.mark.parametrize("option", ["--kvspec-fail-under=100", "--kvspec-rubric=my.toml"])
def test_scoring_without_a_submission_is_a_one_line_usage_error(tmp_path: Path, option: str) -> None:
    proc = pytest_run(tmp_path, "--pyargs", "spec.checks", option)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error, before any check ran
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ERROR: kvspec: ") and "--kvspec-submission=DIR" in lines[0]
    assert "--kvspec-submission=reference" in lines[0]


def test_the_environment_variable_counts_as_asking(tmp_path: Path) -> None:
    env = clean_env() | {"KVSPEC_FAIL_UNDER": "100"}
    proc = pytest_run(tmp_path, "--pyargs", "spec.checks", env=env)
    assert proc.returncode == 4 and "none was given" in proc.stderr, proc.stdout + proc.stderr


def test_the_reference_is_scored_when_named(tmp_path: Path) -> None:
    proc = pytest_run(
        tmp_path, "--pyargs", "spec.checks.test_shapes", "--kvspec-submission=reference",
        "--kvspec-profile=quick", "--kvspec-fail-under=0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kvspec score: " in proc.stdout and "fail-under 0: passed" in proc.stdout

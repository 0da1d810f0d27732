"""The bundled reference passes the whole suite, in the quick and default profiles.

Runs `pytest spec/checks` in a subprocess with `--kvspec-results`, as the grader does, and
reads the verdicts: every check passed, there is a verdict for every check in spec/checks,
and every clause is covered. (The thorough profile is for `nox -s thorough`-style runs by
hand; it takes minutes.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spec.clauses import CLAUSES
from spec.docgen import discover_checks
from spec.results import Verdict, load_verdicts

ROOT = Path(__file__).resolve().parent.parent


def run_suite(profile: str, results: Path) -> tuple[list[Verdict], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVSPEC_", "PYTEST_", "HYPOTHESIS"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "spec/checks", "-p", "no:xdist", "-p", "no:cacheprovider",
         f"--kvspec-profile={profile}", f"--kvspec-results={results}", "-q", "--tb=short"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    output = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert results.exists(), f"the suite wrote no verdicts:\n{output}"
    return load_verdicts(results), output


@pytest.mark.parametrize("profile", ["quick", "default"])
def test_reference_passes_every_check(profile: str, tmp_path: Path) -> None:
    verdicts, output = run_suite(profile, tmp_path / "verdicts.json")
    assert verdicts, f"no checks ran:\n{output}"
    failed = [f"{v.nodeid}\n{v.message}" for v in verdicts if not v.passed]
    assert not failed, "the reference fails:\n\n" + "\n\n".join(failed)

    names = {v.name for v in verdicts}
    assert names and all(names), names
    covered = {cid for v in verdicts for cid in v.clauses}
    missing = [c.id for c in CLAUSES if c.id not in covered]
    assert not missing, f"clauses no verdict covers: {missing}"

    nodeids = [v.nodeid.split("[")[0] for v in verdicts]
    unrun = [c.ref for c in discover_checks() if not any(n == f"spec/checks/{c.ref}" or n.startswith(f"spec/checks/{c.ref}::") for n in nodeids)]
    assert not unrun, f"checks in spec/checks without a verdict: {unrun}"

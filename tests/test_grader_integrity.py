"""Install integrity (spec/grader/integrity.py): a wheel-like install whose RECORD holds the
hashes of its files is verified at start; a changed or added file makes the grader refuse
(exit 2, one line naming it) before it grades anything; a source tree says it was not checked."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fake_wheel_install(site: Path) -> Path:
    """spec/ and reference/ copied into `site`, with a kvspec dist-info whose RECORD hashes them."""
    for package in ("spec", "reference"):
        shutil.copytree(ROOT / package, site / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    info = site / "kvspec-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kvspec\nVersion: 0.1.0\n")
    rows = []
    for path in sorted(p for package in ("spec", "reference") for p in (site / package).rglob("*") if p.is_file()):
        digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
        rows.append(f"{path.relative_to(site).as_posix()},sha256={digest},{path.stat().st_size}")
    rows += [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(rows) + "\n")
    return site


def run(site: Path, *code_or_args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "KVSPEC_"))}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, *code_or_args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_installed_files_are_verified_and_a_changed_one_is_refused(tmp_path: Path) -> None:
    site = fake_wheel_install(tmp_path / "site")
    check = "from spec.grader.integrity import check_install; print(check_install())"
    ok = run(site, "-c", check, cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("verified: "), ok.stdout + ok.stderr

    changed = site / "spec" / "checks" / "test_memory.py"
    changed.write_text(changed.read_text() + "\n# changed after install\n")
    refused = run(site, "-m", "spec", "grade", "--out", "out", cwd=tmp_path)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stdout + refused.stderr
    assert "test_memory.py differs from what was installed" in lines[0]
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_python_file_that_was_never_installed_is_refused(tmp_path: Path) -> None:
    site = fake_wheel_install(tmp_path / "site")
    (site / "spec" / "checks" / "test_planted.py").write_text("def test_x():\n    pass\n")
    refused = run(site, "-c", "from spec.grader.integrity import check_install; check_install()", cwd=tmp_path)
    assert refused.returncode != 0 and "never installed" in refused.stderr and "test_planted.py" in refused.stderr


def test_a_source_tree_is_reported_as_not_verified() -> None:
    from spec.grader.integrity import NOT_CHECKED, check_install

    assert check_install() == NOT_CHECKED  # this repository: an editable install
    assert check_install("no-such-distribution-kvspec") == NOT_CHECKED

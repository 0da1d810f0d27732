"""The grader's own defences (spec/grader/run.py, safe_io.py), one by one and cheaply; the
attacks themselves, through the real CLI, are in tests/test_attacks.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spec.discovery import Target
from spec.grader import run
from spec.grader.safe_io import UnsafeFile, read_bounded, remove_tree

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: /proc, prctl, FIFOs")


def test_the_grader_pytest_imports_nothing_from_its_working_directory(tmp_path: Path) -> None:
    """Attack 1 of issue 9: a `spec` package, a conftest.py and a sitecustomize.py in the run's cwd."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    marker = tmp_path / "planted-code-ran"
    planted = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    (workdir / "spec").mkdir()
    for name in ("spec/__init__.py", "conftest.py", "sitecustomize.py", "pytest.py"):
        (workdir / name).write_text(planted)
    options = run.Options("quick", 0, 1, "process", 60.0)
    cmd = run._base_command(workdir) + ["--collect-only", "--kvspec-grader-manifest=manifest.json"]
    cmd += run._suite_options(Target(None, "reference.memoization"), options)
    proc = subprocess.run(cmd, cwd=workdir, env=run._environment(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not marker.exists(), f"planted code ran: {marker.read_text()}"
    assert len(json.loads((workdir / "manifest.json").read_text())) > 10


def test_a_verdict_line_is_believed_only_with_the_key() -> None:
    key = os.urandom(32)
    good = {"nodeid": "a::b", "name": "b", "clauses": ["KV-GET-1"], "group": "get", "passed": False, "message": "m", "duration": 0.1}
    forged = dict(good, nodeid="a::c", passed=True)
    lines = [
        json.dumps({"verdict": good, "mac": run.sign(key, good)}),
        json.dumps({"verdict": forged, "mac": hmac.new(b"x" * 32, json.dumps(forged, sort_keys=True).encode(), hashlib.sha256).hexdigest()}),
        "not json",
        json.dumps({"verdict": dict(good, passed=True), "mac": run.sign(key, good)}),  # same mac, changed verdict
    ]
    verdicts, rejected = run.parse_stream("\n".join(lines).encode(), key)
    assert list(verdicts) == ["a::b"] and not verdicts["a::b"].passed and rejected == 3


@LINUX
def test_bounded_reads_refuse_fifos_symlinks_and_big_files(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"x" * 10)
    assert read_bounded(tmp_path / "ok", 10) == b"x" * 10
    os.mkfifo(tmp_path / "fifo")  # nobody writes it: an open() for reading would block forever
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    (tmp_path / "big").write_bytes(b"x" * 11)
    for name, why in (("fifo", "not a regular file"), ("link", "cannot open"), ("big", "more than the 10"), ("missing", "cannot open")):
        with pytest.raises(UnsafeFile, match=why):
            read_bounded(tmp_path / name, 10)


def test_removal_of_a_tree_nested_deeper_than_recursion_goes_never_raises(tmp_path: Path) -> None:
    top = tmp_path / "scratch"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for _ in range(3000):  # deeper than shutil.rmtree's recursion can follow
        os.mkdir("d", dir_fd=fd)
        sub = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = sub
    os.close(fd)
    assert remove_tree(top) is None and not top.exists()


CHAIN = textwrap.dedent("""
    import os, sys, time
    from spec.grader import run
    from spec.isolation import procfs
    run.become_subreaper()
    counter = sys.argv[1]
    if os.fork() == 0:
        os.setsid()
        deadline = time.time() + 30
        while time.time() < deadline:  # every generation forks and dies: a new pid each time
            if os.fork() != 0:
                os._exit(0)
            with open(counter, "a") as f:
                f.write("x")
            time.sleep(0.002)
        os._exit(0)
    time.sleep(1.0)
    killed = run.sweep()
    left = procfs.descendants()
    size = os.path.getsize(counter)
    time.sleep(0.5)
    print(killed, len(left), os.path.getsize(counter) - size)
""")


@LINUX
def test_sweep_freezes_and_kills_a_chain_that_regrows(tmp_path: Path) -> None:
    """Attack 3 of issue 9: a leftover chain that outlives a fixed number of kill rounds."""
    counter = tmp_path / "generations"
    counter.write_text("")
    proc = subprocess.run([sys.executable, "-c", CHAIN, str(counter)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    killed, left, grew = map(int, proc.stdout.split())
    assert killed >= 1 and left == 0 and grew == 0, proc.stdout

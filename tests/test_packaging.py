"""A normal install, not the source tree: the wheel, a fresh virtual environment, Gradescope.

test_the_wheel_ships_every_subpackage builds the wheel as `pip wheel` does (offline: no
build isolation, no index) and reads its file list.

test_a_fresh_install_... is the one virtual environment of the session (one test, so
pytest-xdist cannot build it twice). It is built by the documented Gradescope setup.sh in
a simulated Gradescope layout (AUTOGRADER_ROOT/source/{setup.sh,run_autograder,kvspec,
rubric.toml}, submission/, results/), which creates the venv and installs kvspec from its
source folder, non-editable. No network: apt-get is a no-op, pip has no index, and the
venv is given the dependencies of this test environment (numpy, hypothesis, pytest,
setuptools), hard-linked from its site-packages without kvspec itself (so this
environment's editable kvspec cannot shadow the installed one). Then, from unrelated
directories: run_autograder grades the bundled example under a custom rubric and explains
an empty upload, the GitHub Actions workflow of docs/ci.md runs its commands (parsed as
YAML), and an unrelated test suite with its own 5-example Hypothesis profile runs 5.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import yaml

try:
    from test_plugin_hygiene import UNRELATED
except ImportError:  # tests/ imported as a package
    from tests.test_plugin_hygiene import UNRELATED

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUBRIC = '[rubric]\nname = "course rubric"\n\n[groups]\nupdate = 50\nget = 50\n'


def copy_source(target: Path) -> Path:
    """What `git archive` would hold of the distribution (the build writes into it)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("reference", "spec"):
        shutil.copytree(ROOT / name, target / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, target / name)
    return target


def clean_env(**extra: str) -> dict[str, str]:
    """No steering of pip, pytest, Hypothesis or kvspec from this machine's environment."""
    drop = ("PIP_", "PYTHON", "KVSPEC_", "PYTEST_", "HYPOTHESIS", "VIRTUAL_ENV", "CI")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"} | extra


def run(cmd: list[str] | str, cwd: Path, env: dict[str, str], expect: int = 0, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, shell=isinstance(cmd, str))
    assert proc.returncode == expect, f"{cmd}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_wheel_ships_every_subpackage(tmp_path: Path) -> None:
    source = copy_source(tmp_path / "src")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        tmp_path, clean_env())  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("kvspec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(ROOT)) for p in ROOT.glob("*/**/__init__.py") if p.parts[len(ROOT.parts)] in ("reference", "spec")}
    assert packages >= {"spec", "spec/checks", "spec/grader", "spec/isolation", "reference"}
    for package in packages:
        for module in (ROOT / package).glob("*.py"):
            assert f"{package}/{module.name}" in names, f"{package}/{module.name} is not in the wheel"
    assert {"spec/rubric.toml", "spec/py.typed"} <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "kvspec = spec.plugin" in zipfile.ZipFile(wheel).read(entry_points).decode()
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "License-Expression: MIT" in zipfile.ZipFile(wheel).read(metadata).decode()


FILL = """\
import os, shutil, sys
source, target = sys.argv[1], sys.argv[2]
for entry in sorted(os.listdir(source)):
    name = entry.lower()
    if "kvspec" in name or name.startswith("__editable__") or name.endswith((".pth", ".egg-link")):
        continue  # this environment's editable kvspec must not shadow the installed one
    src, dst = os.path.join(source, entry), os.path.join(target, entry)
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    if os.path.isdir(src):
        shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)
    else:
        link(src, dst)
"""


def shims(target: Path) -> Path:
    """apt-get does nothing; python3 is this interpreter. A venv it creates holds this
    environment's dependencies, pip and setuptools (hard links, or copies, of its
    site-packages without kvspec), where Gradescope's pip would fetch them from PyPI (build
    isolation included); it is created --without-pip (ensurepip's older setuptools would
    shadow them) and gets a bin/pip running that pip. Real files in the venv, not a .pth
    to elsewhere: the sandbox isolation binds the venv, not arbitrary directories."""
    target.mkdir()
    real = getattr(sys, "_base_executable", sys.executable)
    site = sysconfig.get_paths()["purelib"]
    (target / "fill.py").write_text(FILL)
    (target / "apt-get").write_text("#!/bin/sh\nexit 0\n")
    (target / "python3").write_text(
        '#!/bin/sh\n'
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
        f'    "{real}" -m venv --without-pip "$3" || exit $?\n'
        '    site=$("$3/bin/python" -c \'import sysconfig; print(sysconfig.get_paths()["purelib"])\')\n'
        f'    "{real}" "{target / "fill.py"}" "{site}" "$site" || exit $?\n'
        '    printf \'#!/bin/sh\\nexec "%s" -m pip "$@"\\n\' "$3/bin/python" > "$3/bin/pip" && chmod +x "$3/bin/pip"\n'
        '    exit 0\n'
        'fi\n'
        f'exec "{real}" "$@"\n'
    )
    for tool in ("apt-get", "python3"):
        (target / tool).chmod(0o755)
    return target


def gradescope_layout(root: Path) -> Path:
    source = root / "source"
    source.mkdir(parents=True)
    for name in ("setup.sh", "run_autograder"):
        shutil.copy(DOCS / "gradescope" / name, source / name)
    copy_source(source / "kvspec")
    (source / "rubric.toml").write_text(RUBRIC)
    return root


def upload(root: Path, files: Path | None) -> None:
    for name in ("submission", "results"):
        shutil.rmtree(root / name, ignore_errors=True)
    if files is None:
        (root / "submission").mkdir()
        (root / "submission" / "notes.txt").write_text("forgot to upload my code")
    else:
        shutil.copytree(files, root / "submission", ignore=shutil.ignore_patterns("__pycache__"))


def test_a_fresh_install_grades_runs_the_plugin_and_leaves_other_tests_alone(tmp_path: Path) -> None:
    start = time.monotonic()
    root = gradescope_layout(tmp_path / "autograder")
    tools = shims(tmp_path / "shims")
    # pip's negative options read inverted from the environment: PIP_NO_BUILD_ISOLATION=0 turns isolation off.
    env = clean_env(AUTOGRADER_ROOT=str(root), PATH=f"{tools}{os.pathsep}{os.environ['PATH']}", PIP_NO_BUILD_ISOLATION="0")

    # setup.sh: the venv, kvspec installed from source/kvspec, the reference graded (custom rubric)
    run(["bash", str(root / "source" / "setup.sh")], root / "source", env)
    python = root / "venv" / "bin" / "python"
    assert json.loads((root / "selftest" / "results.json").read_text())["score"] == 100
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([str(python), "-c", "import spec, importlib.metadata as m; print(spec.__file__); print(m.distribution('kvspec').read_text('direct_url.json'))"],
                elsewhere, env).stdout.splitlines()  # fmt: skip
    assert Path(where[0]).is_relative_to(root / "venv"), where  # the installed copy, not this checkout
    assert '"editable": true' not in where[1]

    # run_autograder, as Gradescope runs it: the bundled example, under the zip's rubric.toml
    upload(root, ROOT / "examples" / "buggy-submission")
    run(["bash", str(root / "source" / "run_autograder"), "--profile", "quick", "--isolation", "none", "--jobs", "1"], root / "source", env)
    data: dict[str, Any] = json.loads((root / "results" / "results.json").read_text())
    assert data["score"] == 50 and sum(t["max_score"] for t in data["tests"]) == 100  # its update is right, its get is not
    assert {t["tags"][-1] for t in data["tests"] if t["max_score"] > 0} == {"update", "get"}
    assert f"rubric: course rubric ({root / 'source' / 'rubric.toml'})" in data["output"]
    upload(root, None)
    run(["bash", str(root / "source" / "run_autograder")], root / "source", env)
    empty = json.loads((root / "results" / "results.json").read_text())
    assert empty["score"] == 0 and "Upload your tinytorch folder" in empty["output"] and "--module" not in empty["output"]

    # docs/ci.md's workflow, its steps run here; `pip install` and `pytest` are the venv's
    workflow = yaml.safe_load(next(b for b in _blocks(DOCS / "ci.md", "yaml")))
    steps = workflow["jobs"]["kv-cache"]["steps"]
    assert [s.get("uses", "run").split("@")[0] for s in steps] == ["actions/checkout", "actions/setup-python", "run", "run", "actions/upload-artifact"]
    install, test = steps[2]["run"], steps[3]["run"]
    assert install.startswith("pip install ") and "kvspec" in install  # done above, from the course's copy
    (tools / "pytest").write_text(f'#!/bin/sh\nexec "{python}" -m pytest "$@"\n')
    (tools / "pytest").chmod(0o755)
    checkout = tmp_path / "student-repo"
    shutil.copytree(ROOT / "examples" / "buggy-submission", checkout, ignore=shutil.ignore_patterns("__pycache__"))
    proc = run(test, checkout, env | {"KVSPEC_PROFILE": "quick"}, expect=1)  # the example scores below 100
    assert "kvspec score" in proc.stdout
    junit = ET.parse(checkout / steps[4]["with"]["path"]).getroot()
    assert len(list(junit.iter("testcase"))) > 30
    forgot = run(test.replace(" --kvspec-submission=.", ""), checkout, env, expect=4)  # a CI that forgot the option
    assert "none was given" in forgot.stderr

    # an unrelated project's tests in the same environment: its own settings, untouched
    other = tmp_path / "other-project"
    other.mkdir()
    (other / "test_other.py").write_text(UNRELATED)
    proc = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_other.py"], other, env)
    assert "2 passed" in proc.stdout
    print(f"fresh install, Gradescope, workflow and unrelated suite: {time.monotonic() - start:.1f} s")


def _blocks(path: Path, lang: str) -> list[str]:
    import re

    return re.findall(rf"^```{lang}[ \t]*\n(.*?)^```[ \t]*$", path.read_text(), flags=re.S | re.M)

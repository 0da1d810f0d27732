"""Every command in the user docs runs, and does what the docs say.

Commands are the lines starting with `$ ` inside ```console blocks of docs/*.md (except
design.md and spec.md, which show none). Each runs with bash in a fresh directory holding
a copy of `examples/` (so `examples/buggy-submission` resolves), with the test's Python
first on PATH (so `python` and `pytest` are this environment's), after the same doc's
earlier commands that write a file (`... > FILE`), which later ones may read.

Placeholders: `path/to/submission` is the bundled example `examples/buggy-submission`;
`path/to/submissions/` a class directory holding a copy of it and a submission that fails
to import. A command expects exit code 0 unless its line ends with `# exit code N`.

One substitution: `nox -s grade -- ARGS` runs `python -m spec grade ARGS` (what the
session runs, checked by test_nox_grade_session_runs_the_grader) instead of building a
fresh virtualenv from the network, and bare `nox -s grade` runs the grader with the quick
profile to keep this test fast; the default-profile full marks are the reference suite's
and test_grader_cli's concern.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

try:
    from test_grader_rubric import gradescope_problems
except ImportError:  # tests/ imported as a package
    from tests.test_grader_rubric import gradescope_problems

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
USER_DOCS = ("instructors.md", "students.md", "ci.md", "rubric.md")
EXIT = re.compile(r"\s+#\s*exit code (\d+)\s*$")


@dataclass(frozen=True)
class Command:
    doc: str
    index: int
    text: str  # as written in the doc
    expect: int

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.index}"


def fenced_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M)


def commands(doc: str) -> list[Command]:
    out = []
    for block in fenced_blocks((DOCS / doc).read_text(), "console"):
        for line in block.splitlines():
            if line.startswith("$ "):
                text = line[2:].strip()
                m = EXIT.search(text)
                out.append(Command(doc, len(out), text, int(m.group(1)) if m else 0))
    return out


ALL = [c for doc in USER_DOCS for c in commands(doc)]
# Packaging for Gradescope (git archive of HEAD) runs in a clone: test_gradescope_packaging_commands.
PACKAGING = [c for c in ALL if "autograder" in c.text]


def substitute(text: str) -> str:
    text = EXIT.sub("", text)
    text = text.replace("path/to/submissions/", "class/").replace("path/to/submission", "examples/buggy-submission")
    text = text.replace("nox -s grade -- ", "python -m spec grade ")
    if re.search(r"\bnox -s grade\s*$", text):
        text = text.replace("nox -s grade", "python -m spec grade --profile quick")
    return text


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "KVSPEC_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["KVSPEC_PROFILE"] = "quick"  # plain pytest commands without a profile (the grader ignores it)
    return env


# Commands that are the same once substituted run once (the students' and the instructors'
# first grading command, and the nox one, are all `python -m spec grade <example> --profile quick`).
UNIQUE: dict[str, list[Command]] = {}
for _c in ALL:
    if _c not in PACKAGING:
        UNIQUE.setdefault(substitute(_c.text), []).append(_c)
RUNNABLE = [group[0] for group in UNIQUE.values()]
IDS = ["+".join(c.id for c in group) for group in UNIQUE.values()]


def run(text: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", text], cwd=cwd, env=environment(), capture_output=True, text=True, timeout=timeout)


def workspace(base: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache")
    shutil.copytree(ROOT / "examples", base / "examples", ignore=ignore)
    klass = base / "class"
    shutil.copytree(ROOT / "examples" / "buggy-submission", klass / "alice", ignore=ignore)
    (klass / "bob").mkdir()
    (klass / "bob" / "memoization.py").write_text("import numpy as np\nraise SyntaxError('not finished')\n")
    (klass / "carol").mkdir()  # uploaded nothing the grader can find
    (klass / "carol" / "README.txt").write_text("sorry")
    return base


def test_docs_have_commands() -> None:
    docs_with_commands = {c.doc for c in ALL}
    assert {"instructors.md", "students.md", "ci.md"} <= docs_with_commands
    assert any("--kvspec-fail-under=100" in c.text and "--kvspec-submission=." in c.text for c in ALL)


@pytest.mark.parametrize("command", RUNNABLE, ids=IDS)
def test_doc_command(command: Command, tmp_path: Path) -> None:
    cwd = workspace(tmp_path)
    same = UNIQUE[substitute(command.text)]
    assert len({c.expect for c in same}) == 1, "the docs disagree on this command's exit code"
    for earlier in commands(command.doc)[: command.index]:
        if " > " in earlier.text:
            assert run(substitute(earlier.text), cwd).returncode == earlier.expect, earlier.text
    proc = run(substitute(command.text), cwd)
    assert proc.returncode == command.expect, f"{command.text}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    for c in same:
        check_what_the_doc_says(c, cwd, proc)


def reports_agree(out: Path) -> dict[str, Any]:
    """The three reports exist, results.json is Gradescope's format, and they agree."""
    assert {"results.json", "junit.xml", "report.md"} <= {p.name for p in out.iterdir()}
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    assert gradescope_problems(data) == []
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    own = suite.find("properties")
    assert own is not None
    score = {p.get("name"): p.get("value") for p in own}["score"]
    assert float(str(score)) == data["score"]
    assert suite.get("tests") == str(len(data["tests"]))
    assert suite.get("failures") == str(sum(t["status"] == "failed" for t in data["tests"]))
    assert {c.get("name") for c in suite.iter("testcase")} == {t["name"].split(": ", 1)[1] for t in data["tests"]}
    assert f"**Score: {score} / " in (out / "report.md").read_text()
    return data


def check_what_the_doc_says(command: Command, cwd: Path, proc: subprocess.CompletedProcess[str]) -> None:
    text = substitute(command.text)
    if text.startswith("python -m spec grade") and "class/" not in text:
        m = re.search(r"--out (\S+)", text)
        data = reports_agree(cwd / (m.group(1) if m else "grade-report"))
        if "examples/buggy-notebook" in text:  # the same two bugs, handed in as notebooks
            assert "form: notebook modules/18_memoization/memoization.ipynb exported by the grader" in proc.stdout
            assert "Tensor: tinytorch.core.tensor:Tensor, the submission's own, exported from" in proc.stdout
        if "examples/buggy-" not in text:  # the reference: full marks
            assert data["score"] == 100 and all(t["status"] == "passed" for t in data["tests"])
            assert "kvspec grade: reference: 100/100 points" in proc.stdout and "failing checks: none" in proc.stdout
        else:
            assert data["score"] < 100 and (data["score"] > 0 or "--groups" in text)  # both groups asked for fail
            failed = {t["tags"][-1] for t in data["tests"] if t["status"] == "failed"}
            assert {"get", "reset"} <= failed, failed  # the example's two bugs
    if "--groups" in text:
        m = re.search(r"--groups (\S+)", text)
        assert m is not None
        assert {t["tags"][-1] for t in data["tests"]} == {"import", *m.group(1).split(",")}
    if "class/" in text:
        m = re.search(r"--out (\S+)", text)
        assert m is not None
        check_batch(cwd / m.group(1))
    if "--kvspec-fail-under" in text:
        assert "kvspec score" in proc.stdout
    if text.startswith("KVSPEC_WORKER_MEMORY_MB="):  # instructors.md: a worker that cannot start is the grader's fault
        assert "python -m spec grade: error: internal error, a grader fault and not the submission's: " in proc.stderr
        assert not (cwd / "grade-report" / "results.json").exists()
    if command.doc == "students.md" and text.startswith("python -m spec grade"):
        # The counterexample quoted in students.md is what this very command reports.
        quoted = fenced_blocks((DOCS / "students.md").read_text(), "text") + fenced_blocks((DOCS / "students.md").read_text(), "python")
        assert quoted, "students.md quotes no failure message"
        report = (cwd / "grade-report" / "report.md").read_text()
        for block in quoted:
            assert block.strip() in report, "the failure quoted in students.md is no longer what the tool prints"


@pytest.fixture
def repo_clone(tmp_path: Path) -> Path:
    """The Gradescope packaging commands run in a clone (they use git archive HEAD)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    return clone


def test_gradescope_packaging_commands(repo_clone: Path) -> None:
    assert len(PACKAGING) == 3 and all(c.doc == "instructors.md" for c in PACKAGING)
    proc = run(" && ".join(substitute(c.text) for c in PACKAGING), repo_clone)
    assert proc.returncode == 0, proc.stderr
    names = set(zipfile.ZipFile(repo_clone / "autograder.zip").namelist())
    assert {"setup.sh", "run_autograder", "kvspec/pyproject.toml", "kvspec/spec/rubric.toml"} <= names


def _run_autograder(tmp_path: Path, submission: Path | None, **extra_env: str) -> subprocess.CompletedProcess[str]:
    root = tmp_path / "autograder"
    (root / "source").mkdir(parents=True, exist_ok=True)
    if submission is None:
        (root / "submission").mkdir()
        (root / "submission" / "notes.txt").write_text("forgot to upload my code")
    else:
        shutil.copytree(submission, root / "submission", ignore=shutil.ignore_patterns("__pycache__"))
    env = environment() | {"AUTOGRADER_ROOT": str(root), "KVSPEC_PYTHON": sys.executable} | extra_env
    return subprocess.run(
        ["bash", str(DOCS / "gradescope" / "run_autograder"), "--profile", "quick"],
        cwd=root / "source", env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _autograder(tmp_path: Path, submission: Path | None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = _run_autograder(tmp_path, submission)
    return proc, json.loads((tmp_path / "autograder" / "results" / "results.json").read_text())


def test_run_autograder_grades_the_submission(tmp_path: Path) -> None:
    broken = tmp_path / "upload"
    broken.mkdir()
    (broken / "memoization.py").write_text("from tinytorch.core.tensor import Tensor  # not uploaded\n")
    proc, data = _autograder(tmp_path, broken)
    assert proc.returncode == 0, proc.stderr
    assert gradescope_problems(data) == [] and data["score"] == 0
    (imp,) = [t for t in data["tests"] if "import" in t["tags"]]
    assert "No module named 'tinytorch'" in imp["output"]


def test_run_autograder_passes_the_course_tensor(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.mkdir()  # cheap: the module still fails to import, after the Tensor question is settled
    (upload / "memoization.py").write_text("from tinytorch.core.tensor import Tensor\n\nraise ImportError('not finished')\n")
    (tmp_path / "autograder" / "source").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "buggy-submission" / "tinytorch" / "core" / "tensor.py", tmp_path / "autograder" / "source" / "course_tensor.py")
    proc, data = _autograder(tmp_path, upload)
    assert proc.returncode == 0, proc.stderr
    assert "Tensor: the course's Tensor from --tensor-file course_tensor.py, in place of tinytorch.core.tensor" in data["output"]
    (imp,) = [t for t in data["tests"] if "import" in t["tags"]]
    assert "not finished" in imp["output"] and "No module named 'tinytorch'" not in imp["output"]


def test_run_autograder_explains_an_upload_without_code(tmp_path: Path) -> None:
    proc, data = _autograder(tmp_path, None)
    assert proc.returncode == 0, proc.stderr
    assert data["score"] == 0 and "no cache module" in data["output"] and "Upload your tinytorch folder" in data["output"]
    assert "--module" not in data["output"] and "python -m spec" not in data["output"]  # nothing a student cannot do
    assert not (tmp_path / "autograder" / "results" / "grader-error.txt").exists()


def test_run_autograder_writes_no_score_when_the_grader_itself_fails(tmp_path: Path) -> None:
    site = tmp_path / "site"  # breaks the grader's isolated worker before it imports the submission
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\nif sys.orig_argv[1:3] == ['-m', 'spec.isolation.worker']:\n    os._exit(1)\n"
        "if 'spec.isolation.forkserver' in sys.orig_argv:\n    import spec.isolation.worker\n"
        "    spec.isolation.worker.serve = lambda *args: os._exit(1)\n"
    )
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "memoization.py").write_text("from reference.memoization import Tensor, KVCache, enable_kv_cache, disable_kv_cache\n")
    proc = _run_autograder(tmp_path, upload, PYTHONPATH=str(site))
    results = tmp_path / "autograder" / "results"
    assert proc.returncode == 1 and "grader fault" in proc.stdout, proc.stdout + proc.stderr
    assert not (results / "results.json").exists()  # Gradescope then says the autograder failed: no score
    assert not (results / "grader-error.txt").exists()


def test_setup_script_is_valid_bash_and_installs_where_run_autograder_looks() -> None:
    setup = DOCS / "gradescope" / "setup.sh"
    assert subprocess.run(["bash", "-n", str(setup)]).returncode == 0
    assert 'ROOT="${AUTOGRADER_ROOT:-/autograder}"' in setup.read_text() and 'python3 -m venv "$ROOT/venv"' in setup.read_text()
    assert "$ROOT/venv/bin/python" in (DOCS / "gradescope" / "run_autograder").read_text()
    assert os.access(DOCS / "gradescope" / "run_autograder", os.X_OK) and os.access(setup, os.X_OK)


def test_workflow_example_runs_the_documented_command() -> None:
    (workflow,) = fenced_blocks((DOCS / "ci.md").read_text(), "yaml")
    runs = [line.split("run:", 1)[1].strip() for line in workflow.splitlines() if line.strip().startswith("- run:")]
    pytest_lines = [r for r in runs if r.startswith("pytest ")]
    assert len(pytest_lines) == 1
    documented = "pytest --pyargs spec.checks --kvspec-submission=. --kvspec-fail-under=100"
    assert pytest_lines[0].startswith(documented + " ")
    assert any(documented in c.text for c in commands("ci.md"))


def test_rubric_example_in_the_docs_is_valid() -> None:
    from spec.discovery import Target
    from spec.grader.rubric import parse, tomllib
    from spec.grader.run import Options, collect

    (example,) = fenced_blocks((DOCS / "rubric.md").read_text(), "toml")
    rubric = parse(tomllib.loads(example), "docs/rubric.md")
    rubric.validate_checks(collect(Target(None, "reference.memoization"), Options("quick", 0, 1, "none", 60)))
    assert sum(rubric.group_points.values()) == 100_00


def test_nox_grade_session_runs_the_grader() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        import noxfile
    finally:
        sys.path.remove(str(ROOT))

    class FakeSession:
        posargs = ["some/dir", "--profile", "quick"]
        calls: list[tuple[str, ...]] = []

        def install(self, *args: str) -> None:
            pass

        def run(self, *args: str, **kwargs: Any) -> None:
            self.calls.append(args)

    session = FakeSession()
    noxfile.grade.func(session) if hasattr(noxfile.grade, "func") else noxfile.grade(session)
    assert session.calls == [("python", "-m", "spec", "grade", "some/dir", "--profile", "quick")]


def check_batch(out: Path) -> None:
    """A class directory: per-submission reports, the gradebook, the class summary."""
    for name in ("alice", "bob", "carol"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["junit.xml", "report.md", "results.json"]
        reports_agree(out / name)
    rows = [line.split(",") for line in (out / "gradebook.csv").read_text().splitlines()]
    assert rows[0][:5] == ["submission", "path", "status", "total", "max"]
    totals = {r[0]: float(r[3]) for r in rows[1:]}
    assert set(totals) == {"alice", "bob", "carol"}
    assert {r[0]: r[2] for r in rows[1:]} == {"alice": "graded", "bob": "import failed", "carol": "import failed"}
    alice = json.loads((out / "alice" / "results.json").read_text())
    assert totals["bob"] == totals["carol"] == 0 < totals["alice"] == alice["score"]
    carol = json.loads((out / "carol" / "results.json").read_text())
    assert "no cache module under" in carol["tests"][0]["output"]
    summary = (out / "class-summary.md").read_text()
    table = [line for line in summary.splitlines() if line.startswith("| [KV-")]
    counts = [int(line.split("|")[3].split(" of ")[0]) for line in table]
    # Only alice imported: the two import failures are listed apart, not counted per clause.
    assert counts == sorted(counts, reverse=True) and counts[0] == 1 and counts[-1] == 0
    assert any(line.startswith("| [KV-GET-1](docs/spec.md#kv-get-1-must) ") and "| 1 of 1 |" in line for line in table)
    assert "## Not counted above: 2 submission(s)" in summary

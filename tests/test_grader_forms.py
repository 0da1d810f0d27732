"""Every form a student hands in is graded without hand work (spec/grader/forms.py).

The three package layouts (tinytorch/perf/memoization.py, tinytorch/generation/kv_cache.py,
a loose memoization.py beside tensor.py) are graded through the CLI by the zoo (its base
and the alternatives layout_2025 and loose_files). Here: notebooks (.ipynb and jupytext
percent .py, nbdev `#| export` cells under `#| default_exp`), a zip upload, a folder
holding one .tar.gz (as Gradescope leaves a tar upload), a package whose __init__.py
imports modules the upload lacks, and a Tensor notebook that does not parse, graded with
the instructor's --tensor-file: all in ONE batch call of the CLI, quick profile.

The notebooks are our own, written from the zoo's correct base submission (never course
code), split into cells the way a student's notebook is: a `#| default_exp` cell, export
cells, and test cells that must not be exported (one of them fails if it ever runs).
"""

from __future__ import annotations

import ast
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import jupytext
import nbformat
import pytest

from spec.grader import forms

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.zoo.variants import apply, registry  # noqa: E402

BASE = ROOT / "tests" / "zoo" / "base"
MEMO = (BASE / "tinytorch" / "perf" / "memoization.py").read_text()
TENSOR = (BASE / "tinytorch" / "core" / "tensor.py").read_text()
# The 2026 course's module 18 as the zoo writes it in that release's style (generation scope, stand-in wrapper).
MEMO_2026 = apply(registry()["course_2026_module18"])["tinytorch/perf/memoization.py"]
# What a test cell in a student's notebook looks like; exported, it would fail the import.
TEST_CELL = 'assert False, "a test cell ran: only #| export cells belong in the module"\n'
# The 2025 package's __init__.py imports the whole course; a submission holds two modules of it.
SIBLINGS = ["core.activations", "core.layers", "core.losses", "core.autograd", "core.optimizers", "core.training",
            "core.spatial", "core.attention", "core.embeddings", "data.loader", "text.tokenization",
            "models.transformer", "profiling.profiler", "optimization.quantization", "benchmarking.benchmark"]  # fmt: skip
INIT_2025 = '"""TinyTorch (our stand-in for a package __init__ that imports every module of the course)."""\n' + "".join(
    f"from .{m} import *\n" for m in SIBLINGS
) + "from .core.tensor import Tensor\n"


def grade(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spec", "grade", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def cells_of(source: str) -> list[str]:
    """The source's top-level statements, one per cell (comments and blank lines between
    them go with the next), as a student's notebook holds them."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    starts = [n.lineno - 1 - len(getattr(n, "decorator_list", [])) for n in tree.body] + [len(lines)]
    starts[0] = 0
    return ["".join(lines[a:b]).strip() + "\n" for a, b in zip(starts, starts[1:])]


def notebook(source: str, default_exp: str | None) -> Any:
    nb = nbformat.v4.new_notebook()
    cells = [nbformat.v4.new_markdown_cell(f"# {default_exp or 'a notebook'}\n\nWritten for kvspec's tests.")]
    if default_exp is not None:
        cells.append(nbformat.v4.new_code_cell(f"#| default_exp {default_exp}"))
    for i, code in enumerate(cells_of(source)):
        cells.append(nbformat.v4.new_code_cell("#| export\n" + code))
        if i == 1:
            cells.append(nbformat.v4.new_code_cell(TEST_CELL))
    cells.append(nbformat.v4.new_code_cell("#| hide\nprint('a hidden cell, not exported either')"))
    nb.cells = cells
    return nb


def write_notebook(path: Path, source: str, default_exp: str | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = notebook(source, default_exp)
    if path.suffix == ".ipynb":
        nbformat.write(nb, str(path))
    else:
        path.write_text(jupytext.writes(nb, fmt="py:percent"))
    return path


def package_files(layout: str = "perf") -> dict[str, str]:
    cache = {"perf": "tinytorch/perf/memoization.py", "2025": "tinytorch/generation/kv_cache.py"}[layout]
    return {
        "tinytorch/__init__.py": INIT_2025 if layout == "2025" else "",
        "tinytorch/core/__init__.py": "",
        "tinytorch/core/tensor.py": TENSOR,
        cache: MEMO,
    }


def write_files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def student_repo(root: Path, suffix: str, memo: str = MEMO) -> Path:
    """A student's course repository as committed: notebooks under modules/, no package."""
    write_notebook(root / "modules" / "01_tensor" / f"tensor{suffix}", TENSOR, "core.tensor")
    write_notebook(root / "modules" / "18_memoization" / f"memoization{suffix}", memo, "perf.memoization")
    (root / "README.md").write_text("my course work\n")
    return root


def tarball(path: Path, files: dict[str, str], prefix: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def zipped(path: Path, files: dict[str, str], prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(prefix + name, text)
    return path


# -- every form, graded in one CLI call --------------------------------------------------------


def test_every_form_is_graded_through_the_cli(tmp_path: Path) -> None:
    """One batch call (so one test: xdist would run a shared fixture once per worker)."""
    uploads = tmp_path / "uploads"
    student_repo(uploads / "ipynb", ".ipynb", MEMO_2026)  # the current course: 2026 module 18, as notebooks
    # percent .py notebooks, but the Tensor notebook does not parse: --tensor-file stands in
    write_notebook(uploads / "percent" / "modules" / "18_memoization" / "memoization.py", MEMO, "perf.memoization")
    write_files(uploads / "percent", {"modules/01_tensor/tensor.ipynb": '{"cells": [ {"cell_type": "code", "source": "#| default_exp core'})
    zipped(uploads / "zipped.zip", package_files("perf"), prefix="my-submission/")
    (uploads / "gradescope-tar").mkdir()
    tarball(uploads / "gradescope-tar" / "submission.tar.gz", package_files("2025"))
    (tmp_path / "course_tensor.py").write_text(TENSOR)
    before = {p: p.stat().st_mtime_ns for p in uploads.rglob("*")}
    proc = grade(uploads, "--profile", "quick", "--isolation", "none", "--jobs", "1", "--tensor-file", "course_tensor.py", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p: p.stat().st_mtime_ns for p in uploads.rglob("*")} == before, "the grader wrote into a submission"
    out = tmp_path / "out"

    for name in ("gradescope-tar", "ipynb", "percent", "zipped.zip"):  # full marks, each form
        data, text = report(out, name)
        assert data["score"] == 100, (name, [t["output"][:300] for t in data["tests"] if t["status"] != "passed"])
        assert f"{name}: 100/100" in proc.stdout and "Traceback" not in text

    # notebooks: exported to their default_exp, the Tensor notebook too
    for name, suffix in (("ipynb", ".ipynb"), ("percent", ".py")):
        _, text = report(out, name)
        assert f"- form: notebook modules/18_memoization/memoization{suffix} exported by the grader to tinytorch/perf/memoization.py" in text
        assert "- module: tinytorch.perf.memoization" in text
    data, text = report(out, "ipynb")
    assert "- form: notebook modules/01_tensor/tensor.ipynb exported by the grader to tinytorch/core/tensor.py" in text
    assert "- Tensor: tinytorch.core.tensor:Tensor, the submission's own, exported from modules/01_tensor/tensor.ipynb" in text
    assert "Tensor: tinytorch.core.tensor:Tensor" in data["output"]  # Gradescope's top-level output says it too
    assert "course_tensor.py" not in text  # --tensor-file is for those whose own Tensor does not import

    # archives: extracted (a zip nesting a folder; a folder holding one .tar.gz, as Gradescope leaves it)
    _, text = report(out, "zipped.zip")
    assert "- form: handed in as the archive zipped.zip, extracted by the grader" in text
    _, text = report(out, "gradescope-tar")
    assert "- form: handed in as the archive submission.tar.gz, extracted by the grader" in text
    assert "- module: tinytorch.generation.kv_cache" in text

    # an __init__.py importing modules the upload lacks: left out, and said
    assert (
        "- form: tinytorch/__init__.py imports tinytorch.core.activations, tinytorch.core.layers, tinytorch.core.losses "
        "and 12 more, which the submission does not contain or cannot import: tinytorch.generation.kv_cache was loaded under a bare "
        "tinytorch package (its __init__.py was not run)"
    ) in text

    # the course's Tensor stands in for one whose notebook does not parse
    data, text = report(out, "percent")
    assert "- form: modules/01_tensor/tensor.ipynb was not used: it could not be read (NotJSONError: " in text
    assert (
        "- Tensor: the course's Tensor from --tensor-file course_tensor.py, in place of tinytorch.core.tensor "
        "(its notebook modules/01_tensor/tensor.ipynb could not be read)"
    ) in text
    assert "Tensor: the course's Tensor from --tensor-file course_tensor.py" in data["output"]


def report(out: Path, name: str) -> tuple[dict[str, Any], str]:
    return json.loads((out / name / "results.json").read_text()), (out / name / "report.md").read_text()


# -- one-line errors, before anything runs -------------------------------------------------------


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m spec grade: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def test_bad_uploads_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "garbage.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    line = one_line_error(grade("garbage.zip", "--out", "out", cwd=tmp_path))
    assert "garbage.zip is not a readable zip archive" in line
    zipped(tmp_path / "escape.zip", {"../../evil.py": "print('out of the box')\n"})
    assert "escape.zip is not a safe archive: member '../../evil.py' points outside the archive" in one_line_error(
        grade("escape.zip", "--out", "out", cwd=tmp_path)
    )
    write_notebook(tmp_path / "nodefault" / "memoization.ipynb", MEMO, None)
    line = one_line_error(grade("nodefault", "--out", "out", cwd=tmp_path))
    assert "memoization.ipynb has export cells but no `#| default_exp` line" in line
    assert "add `#| default_exp perf.memoization` to its first code cell" in line
    assert not (tmp_path / "escape.py").exists() and not (tmp_path.parent / "evil.py").exists()


@pytest.mark.parametrize(
    "member, fragment",
    [
        (tarfile.TarInfo("/etc/evil.py"), "has an absolute path"),
        (tarfile.TarInfo("tinytorch/../../evil.py"), "points outside the archive"),
        (tarfile.TarInfo("link.py"), "is a link or a special file"),
        (tarfile.TarInfo("fifo"), "is a link or a special file"),
    ],
)
def test_unsafe_tar_members_are_refused(tmp_path: Path, member: tarfile.TarInfo, fragment: str) -> None:
    if member.name == "link.py":
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    if member.name == "fifo":
        member.type = tarfile.FIFOTYPE
    archive = tmp_path / "upload.tar"
    with tarfile.open(archive, "w") as tf:
        tf.addfile(member, io.BytesIO(b"") if member.isfile() else None)
    with pytest.raises(forms.FormError, match=fragment):
        with forms.prepared(str(archive)):
            pass


def test_links_in_a_zip_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("tinytorch/perf/memoization.py")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(forms.FormError, match="member 'tinytorch/perf/memoization.py' is a link or a special file"):
        with forms.prepared(str(archive)):
            pass


def test_archive_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {f"tinytorch/m{i}.py": "x = 1\n" * 50 for i in range(20)}
    monkeypatch.setattr(forms, "MAX_FILES", 10)
    with pytest.raises(forms.FormError, match="holds more than 10 files"):
        with forms.prepared(str(zipped(tmp_path / "many.zip", files))):
            pass
    monkeypatch.setattr(forms, "MAX_FILES", 1000)
    monkeypatch.setattr(forms, "MAX_ARCHIVE", 100)
    with pytest.raises(forms.FormError, match="big.zip is larger than"):
        with forms.prepared(str(zipped(tmp_path / "big.zip", files))):
            pass
    monkeypatch.setattr(forms, "MAX_ARCHIVE", 1 << 30)
    monkeypatch.setattr(forms, "MAX_BYTES", 2000)
    with pytest.raises(forms.FormError, match="MB of Python files and notebooks"):
        with forms.prepared(str(tarball(tmp_path / "big.tar.gz", files))):
            pass


# -- the grader-made directory -----------------------------------------------------------------


def test_the_prepared_directory_is_a_read_only_private_package(tmp_path: Path) -> None:
    repo = student_repo(tmp_path / "repo", ".ipynb")
    with forms.prepared(str(repo)) as prepared:
        root = Path(prepared.target.path or "")
        assert prepared.target.module == "tinytorch.perf.memoization" and tmp_path not in root.parents
        exported = (root / "tinytorch" / "perf" / "memoization.py").read_text()
        assert "assert False" not in exported and "hidden cell" not in exported and "class KVCache" in exported
        for name in ("tinytorch/__init__.py", "tinytorch/perf/__init__.py", "tinytorch/core/__init__.py", "tinytorch/core/tensor.py"):
            assert (root / name).is_file(), name
        for path in [root, *root.rglob("*")]:
            assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), path
    assert not root.exists()  # removed afterwards
    assert sorted(p.name for p in repo.rglob("*") if p.is_file()) == ["README.md", "memoization.ipynb", "tensor.ipynb"]


def test_a_package_module_wins_over_its_notebook(tmp_path: Path) -> None:
    repo = write_files(student_repo(tmp_path / "repo", ".ipynb"), package_files("perf"))
    (repo / "tinytorch" / "perf" / "memoization.py").write_text(MEMO.replace("BYTES_PER_MB = ", "PACKAGE_COPY = True\nBYTES_PER_MB = "))
    with forms.prepared(str(repo)) as prepared:
        root = Path(prepared.target.path or "")
        assert "PACKAGE_COPY" in (root / "tinytorch" / "perf" / "memoization.py").read_text()
        assert any("memoization.ipynb was not exported: the package's own tinytorch/perf/memoization.py was graded" in f for f in prepared.form)


def test_a_missing_tensor_without_tensor_file_is_said(tmp_path: Path) -> None:
    upload = write_files(tmp_path / "up", {"tinytorch/perf/memoization.py": MEMO})
    with forms.prepared(str(upload)) as prepared:
        assert prepared.tensor.startswith("tinytorch.core.tensor:Tensor, which will not import: the submission has no tinytorch.core.tensor")
        assert "--tensor-file" in prepared.tensor
    course = write_files(tmp_path, {"course_tensor.py": TENSOR}) / "course_tensor.py"
    with forms.prepared(str(upload), tensor_file=str(course)) as prepared:
        assert (Path(prepared.target.path or "") / "tinytorch" / "core" / "tensor.py").read_text() == TENSOR


def test_bare_parents_only_where_an_init_would_fail(tmp_path: Path) -> None:
    files = package_files("perf") | {
        "tinytorch/__init__.py": "from tinytorch.core.tensor import Tensor\nfrom .core import layers\n",
        "tinytorch/core/layers.py": "def broken(:\n",
        "tinytorch/perf/__init__.py": "try:\n    from .profiler import Profiler\nexcept ImportError:\n    Profiler = None\n",
    }
    with forms.prepared(str(write_files(tmp_path / "up", files))) as prepared:
        root = Path(prepared.target.path or "")
        (note,) = [f for f in prepared.form if "bare" in f]
        assert note.startswith("tinytorch/__init__.py imports tinytorch.core.layers (which does not compile), which the submission")
        assert "loaded under a bare tinytorch package" in note
        assert "Profiler" in (root / "tinytorch" / "perf" / "__init__.py").read_text()  # a guarded import cannot fail: kept
        assert "import" not in (root / "tinytorch" / "__init__.py").read_text().replace("imports", "")
    fine = package_files("perf") | {"tinytorch/__init__.py": "from .core.tensor import Tensor\n"}
    with forms.prepared(str(write_files(tmp_path / "fine", fine))) as prepared:
        assert prepared.form == [] and "Tensor" in (Path(prepared.target.path or "") / "tinytorch" / "__init__.py").read_text()


def test_the_tensor_is_found_where_the_module_imports_it(tmp_path: Path) -> None:
    guarded = "try:\n    from tinytorch.core.tensor import Tensor\nexcept ImportError:\n    from tensor import Tensor\n"
    upload = write_files(tmp_path / "loose", {"memoization.py": guarded + "class KVCache:\n    pass\n", "tensor.py": TENSOR})
    with forms.prepared(str(upload)) as prepared:
        assert prepared.target.module == "memoization" and prepared.tensor == "tensor:Tensor, the submission's own"
    upload = write_files(tmp_path / "own", {"memoization.py": "def helper():\n    from tensor import Tensor\n\n\nclass Tensor:\n    pass\n"})
    with forms.prepared(str(upload)) as prepared:
        assert prepared.tensor == "memoization:Tensor, the module's own class"
    upload = write_files(tmp_path / "outside", {"memoization.py": "from reference.tensor import Tensor\n"})
    with forms.prepared(str(upload)) as prepared:
        assert prepared.tensor == "reference.tensor:Tensor (imported by memoization from outside the submission)"
    upload = write_files(tmp_path / "lost", {"memoization.py": "from tinytorch.core.tensor import Tensor\n"})
    with forms.prepared(str(upload)) as prepared:
        assert prepared.tensor.startswith("tinytorch.core.tensor:Tensor, which will not import: the submission has no tinytorch.core.tensor")
    upload = write_files(tmp_path / "broken", {"memoization.py": "from tensor import Tensor\n", "tensor.py": "class Tensor(:\n"})
    with forms.prepared(str(upload)) as prepared:
        assert prepared.tensor.startswith("tensor:Tensor, which will not import: the submission's tensor.py does not compile: SyntaxError at line 1")


def test_a_class_folder_of_forms_is_a_batch(tmp_path: Path) -> None:
    from spec.grader.batch import class_members

    klass = tmp_path / "class"
    student_repo(klass / "ann", ".ipynb")
    zipped(klass / "ben.zip", package_files("perf"))
    write_files(klass / "cy", {"notes.txt": "nothing here"})
    assert [p.name for p in class_members(klass, None) or []] == ["ann", "ben.zip", "cy"]
    assert class_members(klass / "ann", None) is None  # one student's repository: its modules/ is not a class
    assert forms.recognisable(klass / "ann") and not forms.recognisable(klass / "cy")


def test_env_has_no_writes_left(tmp_path: Path) -> None:
    """The temporary directories are removed, also when preparing fails."""
    before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(forms.FormError):
        with forms.prepared(str(tmp_path / "bad.zip")):
            pass
    after = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    assert not {n for n in after - before if n.startswith("kvspec-submission-")}

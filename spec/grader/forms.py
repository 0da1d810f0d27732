"""Turn whatever a student hands in into a grader-made, read-only package directory.

Students hand in a `tinytorch` package (either course release's layout), a loose
`memoization.py` beside a `tensor.py`, nbdev notebooks (`.ipynb`, or jupytext percent
`.py`) whose `#| export` cells belong to the module their `#| default_exp` names, a zip
or tar archive of any of these (as Gradescope delivers an upload), or a folder holding
exactly one such archive. `prepared()` turns each into a private copy laid out as a
package, gives that copy as `Target.path` (the isolated worker mounts it read-only, so
everything the submission needs is inside it) and says, in words, what it did.

Nothing here runs submission code: files are copied, archives are read member by
member, notebooks are read with jupytext (nbformat for `.ipynb`), and Python sources
are only parsed (`ast`), never imported. The student's own directory is never written.

What the copy may differ in, and the report says so:
- modules exported from notebooks (each to `<lib>/<default_exp>.py`, as nbdev would);
  a module the package already holds is kept and its notebook not exported over it;
- a package `__init__.py` that imports modules the submission does not contain (the
  published 2025 package's imports about fifteen) is left out: the cache module loads
  under a bare parent package, as it would if the rest of the course were present;
- with `--tensor-file`, the instructor's Tensor module stands in for a student's Tensor
  module that is missing or does not compile.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import importlib.util
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from spec.discovery import CANDIDATE_MODULES, REFERENCE_TENSOR, DiscoveryError, Target, find_target

MAX_FILES = 5000  # members of an archive, or files of a directory, looked at
MAX_BYTES = 64 * 1024 * 1024  # bytes copied out of one submission (its .py and .ipynb files)
MAX_ARCHIVE = 256 * 1024 * 1024  # bytes of an archive file itself
KEPT_SUFFIXES = (".py", ".ipynb")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
SKIPPED_DIRS = {".git", ".hg", ".svn", "__pycache__", ".ipynb_checkpoints", ".venv", "venv", "node_modules", "__MACOSX"}
DEFAULT_LIB = "tinytorch"
COURSE_TENSOR = "kvspec_course_tensor"  # where --tensor-file goes when the module imports no Tensor

# nbdev 2 directives (`#| export`, `# | default_exp perf.memoization`) and nbdev 1's
# (`#export`, `# default_exp core.tensor`) on a cell's first lines.
_DIRECTIVE = re.compile(r"^\s*#\s*\|\s*([\w-]+)\s*(.*?)\s*$")
_OLD_DIRECTIVE = re.compile(r"^\s*#\s*(default_exp|export|exporti|exports)\s*([\w.]*)\s*$")
EXPORTS = {"export", "exporti", "exports"}


class FormError(Exception):
    """The submission cannot be turned into a package: one line, in the student's words."""


@dataclass
class Prepared:
    target: Target
    tensor: str  # which Tensor the run uses, in words
    form: list[str] = field(default_factory=list)  # how it was handed in and what the grader did


# -- reading what was handed in ------------------------------------------------------------------


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _junk(name: str) -> bool:
    return name == ".DS_Store" or name.startswith("._")


class _Budget:
    def __init__(self, what: str) -> None:
        self.what, self.files, self.bytes = what, 0, 0

    def file(self) -> None:
        self.files += 1
        if self.files > MAX_FILES:
            raise FormError(f"{self.what} holds more than {MAX_FILES} files: upload only your tinytorch folder or notebooks")

    def copy(self, source: IO[bytes], dest: Path) -> None:
        with open(dest, "wb") as out:
            while chunk := source.read(1 << 16):
                self.bytes += len(chunk)
                if self.bytes > MAX_BYTES:
                    raise FormError(f"{self.what} holds more than {MAX_BYTES / 2**20:g} MB of Python files and notebooks")
                out.write(chunk)


def _member_path(name: str, archive: str) -> PurePosixPath | None:
    """The safe relative path of an archive member (None: a directory or junk to skip)."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise FormError(f"{archive} is not a safe archive: member {name!r} has an absolute path")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FormError(f"{archive} is not a safe archive: member {name!r} points outside the archive ('..')")
    if not parts or _junk(parts[-1]) or any(p in SKIPPED_DIRS for p in parts[:-1]):
        return None
    return PurePosixPath(*parts)


def _extract(archive: Path, dest: Path) -> None:
    """Regular files only, each under `dest`, within the caps; a bad archive is a FormError."""
    name = archive.name
    budget = _Budget(name)
    if archive.stat().st_size > MAX_ARCHIVE:
        raise FormError(f"{name} is larger than {MAX_ARCHIVE / 2**20:g} MB: upload only your tinytorch folder or notebooks")

    def write(rel: PurePosixPath | None, source: IO[bytes]) -> None:
        if rel is None or not rel.name.endswith(KEPT_SUFFIXES):
            return
        target = dest.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        budget.copy(source, target)

    try:
        if name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    budget.file()
                    rel = _member_path(info.filename, name)
                    mode = info.external_attr >> 16
                    if info.is_dir():
                        continue
                    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: a zip written without file types
                        raise FormError(f"{name} is not a safe archive: member {info.filename!r} is a link or a special file")
                    with zf.open(info) as source:
                        write(rel, source)
        else:
            with tarfile.open(archive, "r:*") as tf:
                for member in tf:
                    budget.file()
                    rel = _member_path(member.name, name)
                    if member.isdir():
                        continue
                    if not member.isfile():
                        raise FormError(f"{name} is not a safe archive: member {member.name!r} is a link or a special file")
                    stream = tf.extractfile(member)
                    if stream is not None:
                        write(rel, stream)
    except FormError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, OSError, ValueError, NotImplementedError) as exc:
        kind = "zip" if name.lower().endswith(".zip") else "tar"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormError(f"{name} is not a readable {kind} archive ({reason}): upload it again, or upload the folder") from None


def _copy_tree(source: Path, dest: Path) -> None:
    """The .py and .ipynb files under `source`, as regular files; links are followed only
    to files inside `source`."""
    budget = _Budget(source.name or str(source))
    top = source.resolve()
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not os.path.islink(os.path.join(dirpath, d)))
        for filename in sorted(filenames):
            budget.file()
            path = Path(dirpath, filename)
            if _junk(filename) or not filename.endswith(KEPT_SUFFIXES):
                continue
            real = path.resolve()
            if not real.is_file() or (real != top and top not in real.parents):
                continue
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(real, "rb") as handle:
                budget.copy(handle, target)


def _only_archive(directory: Path) -> Path | None:
    """A folder whose only submission is one archive (Gradescope leaves a .tar.gz as it came)."""
    entries = [p for p in directory.iterdir() if not _junk(p.name) and p.name not in SKIPPED_DIRS]
    archives = [p for p in entries if p.is_file() and _is_archive(p)]
    if not archives:
        return None
    has_code = any(p.suffix in KEPT_SUFFIXES for p in directory.rglob("*") if p.is_file())
    if has_code:
        return None
    if len(archives) > 1:
        names = ", ".join(sorted(p.name for p in archives))
        raise FormError(f"{directory.name} holds several archives ({names}): upload one")
    return archives[0]


# -- notebooks -----------------------------------------------------------------------------------


@dataclass
class Notebook:
    path: str  # relative to the upload, for messages
    default_exp: str | None
    exports: dict[str, list[str]]  # module (dotted, under the library) -> the exported cells' code
    error: str = ""  # why it could not be read


def _directives(source: str) -> tuple[list[tuple[str, str]], str]:
    """A cell's leading directives [(name, argument)] and its code without them."""
    lines = source.splitlines()
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _DIRECTIVE.match(line) or (_OLD_DIRECTIVE.match(line) if i == 0 or found else None)
        if m:
            found.append((m.group(1), m.group(2)))
        elif line.strip():
            break
        i += 1
    return found, "\n".join(lines[i:])


def _looks_like_percent_notebook(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return bool(re.search(r"^#\s*\|?\s*default_exp\s", text, flags=re.M)) and "# %%" in text


def read_notebook(path: Path, upload: Path) -> Notebook:
    """The nbdev directives and exported code of one notebook (.ipynb or percent .py)."""
    import jupytext  # here: only notebook submissions pay for importing it

    rel = str(path.relative_to(upload))
    try:
        nb = jupytext.read(str(path), fmt="ipynb" if path.suffix == ".ipynb" else "py:percent")
    except Exception as exc:  # nbformat's and json's errors: a notebook that does not parse
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return Notebook(rel, None, {}, f"{type(exc).__name__}: {reason}")
    default: str | None = None
    cells: list[tuple[str | None, str]] = []  # (explicit module or None, code)
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        directives, code = _directives(source if isinstance(source, str) else "".join(source))
        for name, argument in directives:
            if name == "default_exp" and argument and default is None:
                default = argument.split()[0]
        for name, argument in directives:
            if name in EXPORTS:
                cells.append((argument.split()[0] if argument else None, code))
                break
    exports: dict[str, list[str]] = {}
    for module, code in cells:
        where = module or default
        if where is not None:
            exports.setdefault(where, []).append(code)
    if cells and default is None and any(module is None for module, _ in cells):
        return Notebook(rel, None, exports, "no default_exp")
    return Notebook(rel, default, exports)


def _notebooks(upload: Path) -> list[Path]:
    out = []
    for path in sorted(upload.rglob("*")):
        if not path.is_file() or any(p in SKIPPED_DIRS for p in path.parts):
            continue
        if path.suffix == ".ipynb" or (path.suffix == ".py" and _looks_like_percent_notebook(path)):
            out.append(path)
    return out


def _library(root: Path) -> str:
    """nbdev's lib_path from a settings.ini, else the course's `tinytorch`."""
    ini = root / "settings.ini"
    if ini.is_file():
        parser = configparser.ConfigParser()
        try:
            parser.read(ini, encoding="utf-8")
            lib = parser.get("DEFAULT", "lib_path", fallback="") or parser.get("DEFAULT", "lib_name", fallback="")
        except (configparser.Error, UnicodeDecodeError):
            lib = ""
        if re.fullmatch(r"[A-Za-z_]\w*", lib):
            return lib
    return DEFAULT_LIB


# -- Python sources, parsed only -----------------------------------------------------------------


def module_file(root: Path, dotted: str) -> Path | None:
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _parse(path: Path) -> ast.Module | str:
    """The module's syntax tree, or why it does not compile."""
    try:
        return ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        return f"{type(exc).__name__} at line {exc.lineno}: {exc.msg}"
    except (ValueError, OSError, RecursionError, MemoryError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".") if package else []
    base = parts[: len(parts) - node.level + 1] if node.level <= len(parts) else []
    return ".".join(base + ([node.module] if node.module else []))


def _missing_imports(init: Path, package: str, root: Path) -> list[str]:
    """Modules of this submission's top package that `init` imports unconditionally but
    the submission does not contain (or holds in a form that does not compile)."""
    tree = _parse(init)
    if isinstance(tree, str):
        return [f"(it does not compile: {tree})"]
    top = package.split(".")[0]
    missing: list[str] = []
    for node in tree.body:  # unconditional imports only: a guarded one cannot fail the import
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            subs = [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
            if base == package:  # `from . import x`: x must be a submodule
                names = subs
            else:  # `from .core import layers`: the package, and layers when it is a submodule
                names = [base] + [sub for sub in subs if module_file(root, sub) is not None]
        for name in names:
            if name.split(".")[0] != top or name in missing:
                continue
            found = module_file(root, name)
            if found is None:
                missing.append(name)
            elif isinstance(_parse(found), str):
                missing.append(f"{name} (which does not compile)")
    return missing


def _tensor_import(tree: ast.Module, module: str, root: Path) -> tuple[str, str] | None:
    """Where the cache module binds `Tensor`: ("class", "") for its own class, else
    ("import", "dotted.module") for a `from X import ... Tensor` at top level (try/except
    included: the first X the submission holds, else the first X); None if it binds none."""
    package = module.rpartition(".")[0]
    sources = []
    for node in _top_level(tree.body):
        if isinstance(node, ast.ClassDef) and node.name == "Tensor":
            return ("class", "")
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == "Tensor" for a in node.names):
            sources.append(_absolute(node, package))
    held = [s for s in sources if module_file(root, s) is not None]
    return ("import", (held or sources)[0]) if sources else None


def _installed(top: str) -> bool:
    """Whether a top-level package is importable in the grading environment (the grader's
    own `reference`, say). Only looks it up: nothing is imported."""
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run when the module is imported: its body, and the blocks of
    its top-level try and if statements (not function or class bodies)."""
    for node in body:
        yield node
        if isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _top_level(block)
        elif isinstance(node, ast.If):
            yield from _top_level(node.body)
            yield from _top_level(node.orelse)


# -- recognising a submission without preparing it (for class folders) ---------------------------

_CACHE_EXPORT = re.compile(r"default_exp\s+(perf\.memoization|generation\.kv_cache)\b")


def recognisable(path: Path, module: str | None = None) -> bool:
    """Whether `path` looks like one submission: an archive, a notebook exporting a cache
    module, or a folder holding a cache module (also one level down), such a notebook, or
    one archive. Reads file names and notebook text only."""
    if path.is_file():
        return _is_archive(path) or (path.suffix in KEPT_SUFFIXES and _exports_cache(path))
    if not path.is_dir():
        return False
    try:
        find_target(str(path), module)
        return True
    except DiscoveryError:
        pass
    try:
        if _only_archive(path) is not None:
            return True
    except FormError:
        return True  # several archives: a submission, graded 0 with the reason
    seen = 0
    for notebook in path.rglob("*"):
        seen += 1
        if seen > MAX_FILES:
            return False
        if notebook.suffix in KEPT_SUFFIXES and notebook.is_file() and _exports_cache(notebook):
            return True
    return False


def _exports_cache(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(MAX_BYTES)
    except OSError:
        return False
    return bool(_CACHE_EXPORT.search(head.decode("utf-8", errors="replace")))


# -- the preparation -----------------------------------------------------------------------------


def _make_read_only(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            os.chmod(os.path.join(dirpath, filename), 0o444)
        os.chmod(dirpath, 0o555)


def _remove(path: Path) -> None:
    for dirpath, _, _ in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def _ensure_package(root: Path, dotted: str) -> None:
    """An (empty) __init__.py in each parent package of `dotted` that has none, so the copy
    is a regular package and no installed package of the same name can shadow it."""
    parts = dotted.split(".")[:-1]
    for i in range(1, len(parts) + 1):
        init = root.joinpath(*parts[:i], "__init__.py")
        if init.parent.is_dir() and not init.exists():
            init.write_text("")


def _describe_upload(source: Path) -> str:
    if source.is_dir():
        return f"the folder {source.name or source}"
    if _is_archive(source):
        return f"the archive {source.name}"
    return f"the file {source.name}"


class _Builder:
    def __init__(self, source: Path, work: Path, module: str | None, tensor: str | None, tensor_file: Path | None) -> None:
        self.source, self.work, self.module, self.tensor, self.tensor_file = source, work, module, tensor, tensor_file
        self.upload = work / "submission"
        self.form: list[str] = []
        self.exported: dict[str, str] = {}  # dotted module -> the notebook it came from
        self.unreadable: dict[str, str] = {}  # notebook -> why
        self.empty: dict[str, str] = {}  # notebook -> its default_exp, when it exports no cell
        self.tensor_words = ""
        self.tensor_module = ""  # the submission's Tensor module, when the cache module imports one

    def copy_in(self) -> None:
        self.upload.mkdir()
        source = self.source
        if source.is_dir():
            archive = _only_archive(source)
            if archive is not None:
                self.form.append(f"handed in as the archive {archive.name}, extracted by the grader")
                _extract(archive, self.upload)
            else:
                _copy_tree(source, self.upload)
        elif _is_archive(source):
            self.form.append(f"handed in as the archive {source.name}, extracted by the grader")
            _extract(source, self.upload)
        elif source.suffix in KEPT_SUFFIXES:
            shutil.copyfile(source, self.upload / source.name)
        else:
            raise FormError(f"{source.name} is neither a folder, a .py file, a notebook nor a zip/tar archive")

    def root(self) -> Path:
        """The directory the package lives in: the upload, or its one subfolder holding
        the submission (an unzipped folder nests one level down)."""
        try:
            path = find_target(str(self.upload), self.module).path
        except DiscoveryError:
            path = None
        if path is not None:
            return Path(path)
        libs = [p.parent for p in [self.upload / DEFAULT_LIB, *self.upload.glob(f"*/{DEFAULT_LIB}")] if p.is_dir()]
        return libs[0] if len(libs) == 1 else self.upload

    def export_notebooks(self, root: Path) -> None:
        lib = _library(root)
        for path in _notebooks(self.upload):
            nb = read_notebook(path, self.upload)
            if nb.error:
                self.unreadable[nb.path] = nb.error
                continue
            if nb.default_exp is not None and not nb.exports:
                self.empty[nb.path] = nb.default_exp
            for dotted, cells in nb.exports.items():
                name = f"{lib}.{dotted}"
                target = root.joinpath(lib, *dotted.split(".")).with_suffix(".py")
                if self._is_module_path(path, target):
                    continue  # a percent .py that is itself the module
                if target.exists():
                    if name not in self.exported:
                        self.form.append(f"{nb.path} was not exported: the package's own {target.relative_to(root)} was graded")
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                header = f"# Exported by the kvspec grader from {nb.path} (its export cells), as nbdev would.\n\n"
                target.write_text(header + "\n\n".join(cells) + "\n", encoding="utf-8")
                _ensure_package(root, name)
                self.exported[name] = nb.path

    @staticmethod
    def _is_module_path(path: Path, target: Path) -> bool:
        return path.resolve() == target.resolve()

    def find(self, root: Path) -> Target:
        try:
            return find_target(str(root), self.module, self.tensor)
        except DiscoveryError:
            pass
        if self.module is None:  # a notebook exported elsewhere: the one module that defines KVCache
            defining = [m for m in self.exported if self._defines(root, m, "KVCache")]
            if len(defining) == 1:
                return Target(str(root), defining[0], self.tensor)
        raise FormError(self._nothing_found())

    @staticmethod
    def _defines(root: Path, dotted: str, name: str) -> bool:
        path = module_file(root, dotted)
        tree = _parse(path) if path else "missing"
        return not isinstance(tree, str) and any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body)

    def _nothing_found(self) -> str:
        what = _describe_upload(self.source)
        looked = ", ".join([self.module] if self.module else CANDIDATE_MODULES)
        for nb, why in sorted(self.unreadable.items()):
            if why == "no default_exp":
                return (f"{nb} has export cells but no `#| default_exp` line, so the grader cannot tell which module it is: "
                        f"add `#| default_exp perf.memoization` to its first code cell")  # fmt: skip
            return f"{nb} could not be read as a notebook ({why}); no cache module found in {what}"
        for nb, dotted in sorted(self.empty.items()):
            return f"{nb} names `#| default_exp {dotted}` but has no `#| export` cells: mark the cells to hand in with `#| export`"
        if self.exported:
            made = ", ".join(sorted(self.exported))
            return f"no cache module in {what}: its notebooks export {made}, none of them {looked} or defining KVCache"
        if self.module:
            return f"module {self.module!r} not found under {self.source}"
        return (f"no cache module under {self.source}: looked for {looked}, and for notebooks with `#| default_exp` "
                f"(use --module to name the module)")  # fmt: skip

    def bare_parents(self, root: Path, dotted: str) -> None:
        """Leave out each package __init__.py on the way to `dotted` that would fail on
        modules the submission does not contain."""
        parts = dotted.split(".")
        for i in range(1, len(parts)):
            package = ".".join(parts[:i])
            init = root.joinpath(*parts[:i], "__init__.py")
            if not init.is_file() or init.stat().st_size == 0:
                continue
            missing = _missing_imports(init, package, root)
            if not missing:
                continue
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            init.write_text(f"# Left out by the kvspec grader: the submission's __init__.py imports {', '.join(missing)}.\n")
            self.form.append(
                f"{init.relative_to(root)} imports {shown}, which the submission does not contain or cannot import: "
                f"{dotted} was loaded under a bare {package} package (its __init__.py was not run)"
            )

    def choose_tensor(self, root: Path, target: Target) -> Target:
        if self.tensor is not None:
            self.tensor_words = f"{self.tensor} (given with --tensor)"
            return target
        path = module_file(root, target.module)
        tree = _parse(path) if path else "missing"
        if isinstance(tree, str):
            self.tensor_words = f"not known: {target.module} does not compile ({tree})"
            return target
        found = _tensor_import(tree, target.module, root)
        course = f"the course's Tensor from --tensor-file {self.tensor_file.name}" if self.tensor_file else ""
        if found is None:
            if self.tensor_file is not None:
                self._place_course_tensor(root, COURSE_TENSOR)
                self.tensor_words = f"{course} ({target.module} imports no Tensor)"
                return Target(target.path, target.module, f"{COURSE_TENSOR}:Tensor")
            self.tensor_words = f"{REFERENCE_TENSOR} ({target.module} defines no Tensor)"
            return target
        kind, source = found
        if kind == "class":
            self.tensor_words = f"{target.module}:Tensor, the module's own class"
            return target
        top = source.split(".")[0]
        if not (root / top).is_dir() and not (root / f"{top}.py").is_file() and _installed(top):
            self.tensor_words = f"{source}:Tensor (imported by {target.module} from outside the submission)"
            return target
        self.tensor_module = source
        tensor_path = module_file(root, source)
        problem = ""
        notebook = self._notebook_of(source)
        if tensor_path is None:
            problem = f"its notebook {notebook} could not be read" if notebook else f"the submission has no {source}"
        else:
            parsed = _parse(tensor_path)
            if isinstance(parsed, str):
                problem = f"the submission's {tensor_path.relative_to(root)} does not compile: {parsed}"
        if not problem:
            origin = f", exported from {self.exported[source]}" if source in self.exported else ""
            self.tensor_words = f"{source}:Tensor, the submission's own{origin}"
            return target
        if self.tensor_file is not None:
            self._place_course_tensor(root, source)
            self.tensor_words = f"{course}, in place of {source} ({problem})"
        else:
            self.tensor_words = f"{source}:Tensor, which will not import: {problem} (an instructor can supply the course's Tensor with --tensor-file)"
        return target

    def _notebook_of(self, dotted: str) -> str:
        tail = dotted.split(".")[-1]
        return next((nb for nb in sorted(self.unreadable) if Path(nb).stem == tail), "")

    def _place_course_tensor(self, root: Path, dotted: str) -> None:
        assert self.tensor_file is not None
        destination = root.joinpath(*dotted.split(".")).with_suffix(".py")
        if (destination.parent / destination.stem).is_dir():  # a package of that name: replace its __init__
            destination = destination.parent / destination.stem / "__init__.py"
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.tensor_file, destination)
        _ensure_package(root, dotted)

    def build(self) -> Prepared:
        self.copy_in()
        root = self.root()
        self.export_notebooks(root)
        target = self.find(root)
        module_path = module_file(root, target.module)
        assert module_path is not None
        if self.exported.get(target.module):
            self.form.append(f"notebook {self.exported[target.module]} exported by the grader to {module_path.relative_to(root)}")
        for dotted in sorted(set(self.exported) - {target.module}):
            self.form.append(f"notebook {self.exported[dotted]} exported by the grader to {dotted.replace('.', '/')}.py")
        for nb, why in sorted(self.unreadable.items()):
            self.form.append(f"{nb} was not used: " + ("it has export cells but no `#| default_exp` line" if why == "no default_exp" else f"it could not be read ({why})"))
        self.bare_parents(root, target.module)
        target = self.choose_tensor(root, target)
        tensor_module = target.tensor.split(":")[0] if target.tensor else self.tensor_module
        if tensor_module and module_file(root, tensor_module) is not None:
            _ensure_package(root, tensor_module)
            self.bare_parents(root, tensor_module)
        _ensure_package(root, target.module)
        _make_read_only(self.work)
        return Prepared(Target(str(root.resolve()), target.module, target.tensor), self.tensor_words, self.form)


@contextlib.contextmanager
def prepared(
    submission: str, module: str | None = None, tensor: str | None = None, tensor_file: str | None = None
) -> Iterator[Prepared]:
    """The submission as a grader-made, read-only package directory, removed afterwards.
    "" is the bundled reference (nothing to prepare). Raises FormError (one line)."""
    if not submission:
        yield Prepared(find_target(None, module, tensor), tensor or "reference.memoization's Tensor")
        return
    source = Path(submission)
    if not source.exists():
        raise FormError(f"submission {submission!r} does not exist")
    if tensor is not None and ":" not in tensor:
        raise FormError(f"--tensor takes dotted.module:ClassName, got {tensor!r}")
    work = Path(tempfile.mkdtemp(prefix="kvspec-submission-"))
    try:
        builder = _Builder(source, work, module, tensor, Path(tensor_file) if tensor_file else None)
        try:
            result = builder.build()
        except OSError as exc:
            raise FormError(f"cannot read {_describe_upload(source)}: {exc}") from None
        yield result
    finally:
        _remove(work)

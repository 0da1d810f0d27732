"""Install integrity: grade only with the grader's files as they were installed.

A wheel install records a hash of every file it wrote (the distribution's RECORD, read
through importlib.metadata). At start the grader hashes its installed `spec` and
`reference` files again and refuses (exit 2, one line naming the first changed file) if
one differs, is missing, or if a Python file that was never installed sits among them
(pytest would collect a planted spec/checks/test_*.py). Bytecode is not among them: every
grader process reads bytecode only from its private cache (spec/grader/run.py), so a .pyc
beside the sources is never used.

A source tree or an editable install has no recorded hashes: then nothing is checked, and
every report says so (`install:` in its header). Checking against git was left out: a
developer's tree differs from HEAD as a matter of course, and git may not be there.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
from pathlib import Path

from spec.grader.safe_io import UnsafeFile, read_bounded

PACKAGES = ("spec", "reference")
MAX_FILE = 16 << 20
NOT_CHECKED = "not verified (a source tree or an editable install records no hashes of its files)"


class IntegrityError(Exception):
    """An installed file differs from what was installed (one line)."""


def _roots() -> dict[str, Path]:
    import reference
    import spec

    return {"spec": Path(spec.__file__ or ".").resolve().parent, "reference": Path(reference.__file__ or ".").resolve().parent}


def check_install(distribution: str = "kvspec") -> str:
    """What the reports say about the install; IntegrityError if a file was changed."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return NOT_CHECKED
    roots = _roots()
    recorded: dict[Path, tuple[str, str]] = {}
    for entry in dist.files or ():
        if entry.parts and entry.parts[0] in PACKAGES and entry.hash is not None:
            recorded[Path(str(dist.locate_file(entry))).resolve()] = (entry.hash.mode, entry.hash.value)
    if roots["spec"] / "__init__.py" not in recorded:
        return NOT_CHECKED  # the recorded files are not the ones running (editable install, or another copy)
    for path, (mode, value) in sorted(recorded.items()):
        try:
            data = read_bounded(path, MAX_FILE)
            digest = base64.urlsafe_b64encode(hashlib.new(mode, data).digest()).rstrip(b"=").decode()
        except (UnsafeFile, ValueError) as exc:
            raise IntegrityError(f"the installed grader file {path} cannot be checked ({exc}); reinstall kvspec") from None
        if digest != value:
            raise IntegrityError(f"the installed grader file {path} differs from what was installed; reinstall kvspec")
    for root in roots.values():
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = [d for d in subdirs if d != "__pycache__"]
            for name in sorted(names):
                path = Path(directory) / name
                if name.endswith(".py") and path.resolve() not in recorded:
                    raise IntegrityError(f"the installed grader has a file that was never installed: {path}; reinstall kvspec")
    return f"verified: {len(recorded)} files match the hashes recorded when kvspec was installed"

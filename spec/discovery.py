"""Find a submission's cache module and Tensor class without importing anything.

Course releases put the module in different places (see docs/spec.md, "Where the code
lives"); a grader should find all of them without flags and accept flags where it can't.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CANDIDATE_MODULES = (
    "tinytorch.perf.memoization",  # current course site
    "tinytorch.generation.kv_cache",  # 2025 package
    "memoization",  # a loose file next to a tensor.py
)
REFERENCE_MODULE = "reference.memoization"
REFERENCE_TENSOR = "reference.tensor:Tensor"


class DiscoveryError(Exception):
    """The submission directory holds no cache module we know, or several."""


@dataclass(frozen=True)
class Target:
    """What to load: a directory to put on sys.path (None: the bundled reference), a module,
    and optionally an explicit Tensor ("dotted.module:Name"; None: module.Tensor, else ours)."""

    path: str | None
    module: str
    tensor: str | None = None


def _module_file(root: Path, dotted: str) -> Path | None:
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def find_target(submission_dir: str | None, module: str | None = None, tensor: str | None = None) -> Target:
    """Resolve a submission directory (and optional overrides) to a Target.

    Looks in the directory itself, then in its only subdirectory holding a known module
    (an unzipped submission often nests one level down).
    """
    if submission_dir is None:
        return Target(None, module or REFERENCE_MODULE, tensor)
    root = Path(submission_dir)
    if not root.is_dir():
        raise DiscoveryError(f"submission directory {submission_dir!r} does not exist or is not a directory")
    if tensor is not None and ":" not in tensor:
        raise DiscoveryError(f"--tensor takes dotted.module:ClassName, got {tensor!r}")
    if module is not None:
        if _module_file(root, module) is None:
            raise DiscoveryError(f"module {module!r} not found under {root}")
        return Target(str(root.resolve()), module, tensor)
    roots = [root] + sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    for where in roots:
        found = [m for m in CANDIDATE_MODULES if _module_file(where, m) is not None]
        if found:
            return Target(str(where.resolve()), found[0], tensor)
    names = ", ".join(CANDIDATE_MODULES)
    raise DiscoveryError(f"no cache module under {root}: looked for {names} (use --module to name it)")

"""Render docs/spec.md, the normative document, from spec/clauses.py and the checks themselves.

The clauses (ID, level, group, text, why) come from `spec.clauses`; which checks verify
each clause is read from the `kvspec` marks on the test functions (and on TestCase
classes, for state machines written that way) of every module in spec/checks, so the
document cannot drift from the suite. The prose that is not a clause (how to read the
document, the edge decisions, what is left unspecified) lives here.

    python -m spec.docgen            # print the document
    python -m spec.docgen --write    # write docs/spec.md
    python -m spec.docgen --check    # exit 1 if docs/spec.md is stale
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterable, Sequence

from spec import profiles
from spec.clauses import CLAUSES, GROUPS, Clause
from spec.discovery import CANDIDATE_MODULES

SPEC_DIR = Path(__file__).resolve().parent
CHECKS_DIR = SPEC_DIR / "checks"
DOCUMENT = SPEC_DIR.parent / "docs" / "spec.md"
REGENERATE = "python -m spec.docgen --write"


@dataclass(frozen=True)
class Check:
    """One check: a test in spec/checks, and the clause IDs its `kvspec` mark cites."""

    file: str  # e.g. "test_model.py"
    name: str  # e.g. "test_cached_decoding_equals_uncached_forward", or a TestCase class name
    clauses: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.file}::{self.name}"


def _kvspec_ids(obj: object) -> tuple[str, ...] | None:
    """Clause IDs from the `kvspec` marks on obj (None if it has none)."""
    marks = getattr(obj, "pytestmark", None)
    if marks is None:
        return None
    if not isinstance(marks, list):
        marks = [marks]
    found = [mark for mark in marks if getattr(mark, "name", None) == "kvspec"]
    return tuple(str(arg) for mark in found for arg in mark.args) if found else None


def _checks_in(module: ModuleType, file: str) -> Iterable[Check]:
    """Tests as pytest collects them from a check module: test* functions, and Test* classes
    (a unittest.TestCase, such as a state machine's TestCase, is one check; a plain class
    contributes its test* methods). The closest mark wins, as in spec.results."""
    module_ids = _kvspec_ids(module)
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # imported, not defined here
        if inspect.isfunction(obj) and name.startswith("test"):
            yield Check(file, name, _kvspec_ids(obj) or module_ids or ())
        elif inspect.isclass(obj) and name.startswith("Test"):
            class_ids = _kvspec_ids(obj) or module_ids
            if any(c.__name__ == "TestCase" and c.__module__.startswith("unittest") for c in obj.__mro__):
                yield Check(file, name, class_ids or ())
                continue
            for method_name, method in vars(obj).items():
                if inspect.isfunction(method) and method_name.startswith("test"):
                    yield Check(file, f"{name}::{method_name}", _kvspec_ids(method) or class_ids or ())


def discover_checks(directory: Path = CHECKS_DIR, package: str = "spec.checks") -> list[Check]:
    """Import every test_*.py in spec/checks (in file order) and read its checks' marks."""
    found: list[Check] = []
    for path in sorted(directory.glob("test_*.py")):
        module = importlib.import_module(f"{package}.{path.stem}")
        found.extend(_checks_in(module, path.name))
    return found


def checks_by_clause(checks: Sequence[Check]) -> dict[str, list[Check]]:
    out: dict[str, list[Check]] = {c.id: [] for c in CLAUSES}
    for check in checks:
        for cid in check.clauses:
            out.setdefault(cid, []).append(check)
    return out


def problems(clauses: Sequence[Clause], groups: Sequence[str], checks: Sequence[Check]) -> list[str]:
    """Everything that breaks the clause <-> check correspondence (empty when the suite is complete):
    a clause with no check, a check citing no clause or an unknown one, a check spanning
    groups, a group outside GROUPS."""
    out: list[str] = []
    by_id = {c.id: c for c in clauses}
    for clause in clauses:
        if clause.group not in groups:
            out.append(f"{clause.id}: group {clause.group!r} is not one of GROUPS")
    cited = {cid for check in checks for cid in check.clauses}
    for clause in clauses:
        if clause.id not in cited:
            out.append(f"{clause.id}: no check cites it (mark a test in spec/checks with @checks({clause.id!r}))")
    for check in checks:
        if not check.clauses:
            out.append(f"{check.ref}: cites no clause (mark it with @checks(...))")
            continue
        unknown = [cid for cid in check.clauses if cid not in by_id]
        if unknown:
            out.append(f"{check.ref}: cites unknown clause(s) {unknown}")
            continue
        spanned = sorted({by_id[cid].group for cid in check.clauses})
        if len(spanned) != 1:
            out.append(f"{check.ref}: its clauses span groups {spanned}; a check belongs to one group")
    return out


# -- the document ----------------------------------------------------------------------

INTRO = """\
# The KV-cache module: normative specification

*Generated from `spec/clauses.py` and the checks in `spec/checks/` by `{regenerate}`.
Do not edit by hand: a test fails when this file differs from what the generator writes.*

## Purpose and how to read this document

This is the specification of the KV-cache ("memoization") module of a TinyTorch-style
course: the `KVCache` class students write, and the `enable_kv_cache` /
`disable_kv_cache` functions that make a GPT decode with it. Every rule is a **clause**
with a stable ID (`KV-UPD-1`), a level, one or two sentences, and the reason for it. The
same clauses are executable: each one names the checks in `spec/checks/` that verify it,
and every check cites the clauses it verifies, so the document and the suite cannot
drift apart.

- **MUST**: a submission that violates the clause is wrong; the check fails.
- **SHOULD**: recommended; a violation is reported like any other, and how much it
  counts is the rubric's choice. (Every clause in this version is a MUST.)
- Where this document says nothing, or says *unspecified*, any behaviour conforms.

Clauses belong to **rubric groups** (construction, update, get, ...). A check verifies
clauses of one group only and belongs to that group; the grader's rubric
(`spec/rubric.toml`) gives each group its points.

The suite observes a submission only through its public contract: the `KVCache`
constructor and methods, reading `seq_pos` and the five dimension attributes, and the
outputs of the grader's own model after `enable_kv_cache` / `disable_kv_cache`. It never
writes `seq_pos`, never looks inside objects for buffers, never assumes where the
original forward is kept, and uses no Tensor operation beyond the course's contract.
"""

WHERE = """\
## Where the code lives

A submission is a directory; the grader finds the cache module in it without flags.
Course releases put it in different places; these are searched in this order:

| module | layout |
| --- | --- |
{modules}

`--kvspec-module` names another module and `--kvspec-tensor dotted.module:Name` another
Tensor class (default: the module's own `Tensor`, which the course's module imports).
The module must define `KVCache`, `enable_kv_cache` and `disable_kv_cache` (KV-IMP-1).

In this project:

| path | what |
| --- | --- |
| `reference/kv_cache.py` | the reference `KVCache`, each edge decision documented where it is made |
| `reference/memoization.py` | the reference `enable_kv_cache` / `disable_kv_cache`, laid out like a student module |
| `reference/gpt.py` | the grader's GPT, built around any Tensor class; `forward(tokens, start_pos)` |
| `reference/tensor.py` | the reference Tensor (float32 `.data`, TinyTorch's method names) |
| `spec/clauses.py` | the clauses of this document |
| `spec/checks/` | the checks, one file per rubric group (or two or three groups) |

## The model and the decode protocol

Model-level clauses are checked on the grader's reference GPT, built around the
submission's own Tensor class. The model owns positions: `forward(tokens, start_pos)`
knows each token's absolute position, so the submission owns only attention. Decoding
goes one token at a time, the prompt included:

```python
cache = enable_kv_cache(model)
for t, tok in enumerate(tokens):
    logits = model.forward(Tensor(np.array([[tok]])), start_pos=t)
    cache.advance()
# step t's logits == row t of model.forward(Tensor(np.array([tokens])))
```

When the cache offers a `generation()` scope (the 2026 course), every step runs inside it,
and a forward outside it must leave the cache alone (KV-MOD-8):

```python
cache = enable_kv_cache(model)
for t, tok in enumerate(tokens):
    with cache.generation():
        logits = model.forward(Tensor(np.array([[tok]])), start_pos=t)
    cache.advance()
```
"""

COURSES = """\
## Course releases: what student code may rely on

The grader supports three releases of the course. A submission written for any of them,
correctly, gets full marks; what differs between them is decided by a clause, with its
reason. The model is always the grader's (`reference/gpt.py`), built around the
submission's own Tensor, and offers the union of what the releases' student code calls.

| | 2025 package | course site, module 17 | 2026 course, module 18 |
| --- | --- | --- | --- |
| cache module | `tinytorch.generation.kv_cache` | `tinytorch.perf.memoization` | `tinytorch.perf.memoization` (exported from `modules/18_memoization/memoization.ipynb`) |
| cache API | `KVCache(B, S, L, H, D)`, `update`, `get`, `advance`, `reset`, `get_memory_usage`, `seq_pos` | the same | the same, plus the `generation()` context manager |
| how attention is cached | patch `block.attention.forward`, original saved on the block | patch, or a wrapper object | `block.attention` replaced by a `CachedAttention(attention, cache, layer_idx)` stand-in holding the original as `.attention` |
| when the cached path runs | every single-token forward | every single-token forward | a single-token forward inside `with cache.generation():` only |
| decode protocol | one token at a time at `start_pos=t`, `advance()` after each | the same | the same, each step inside `with cache.generation():` (KV-MOD-8) |
| `_cached_generate` | absent | absent | graded (group `generate`, KV-GEN-1..4) |
| bool dimensions | accepted by some versions | varies | refused (`ValueError`) |

**The model surface every release may rely on** (the grader's GPT offers all of it):

- GPT: `embed_dim`, `num_layers`, `num_heads`, `max_seq_len`, `vocab_size`, `blocks`,
  `forward(tokens, start_pos=0)` (positions sliced from `start_pos`), `__call__`.
- Block: `block.attention`, and the block calls `self.attention.forward(ln1(x), mask)`
  with the causal mask as a binary lower-triangular matrix of the model's Tensor class,
  1 = may attend, 0 = blocked.
- Attention (Module 12): `embed_dim`, `num_heads`, `head_dim`, `q_proj`, `k_proj`,
  `v_proj`, `out_proj`; `_split_heads(x, batch, seq)` -> (B, H, seq, D) and
  `_merge_heads(x, batch, seq)` -> (B, seq, E), both returning the model's Tensor class;
  `forward(x, mask=None)`; `__call__` (which calls `forward`, so a patched `forward` is
  what runs); `parameters()`, the projections' weights and biases.
- Linear: `.forward(x)` on the model's Tensor class, returning it. (Its `weight` and
  `bias` are NumPy arrays in this model; student attention code in every release goes
  through `.forward`.)

**Differences, decided:**

- **The generation scope** (KV-MOD-8). When the cache has `generation()`, the protocol
  runs each decode step inside it, so a 2026 submission is graded on the path it
  implements; and a forward outside the scope, of one token too, must be the original
  model's and leave the cache alone. Why require the second half: the scope is the 2026
  design's whole point (a one-token forward for training or evaluation with the cache
  enabled must not consume or corrupt another sequence's history), and a stand-in that
  ignored it would fail the course's own use. A cache without `generation()` is graded
  without a scope, and caching every single-token forward is then right.
- **`_cached_generate`** (KV-GEN-1..4) is graded only where a release has it; where the
  module does not define it, the group does not apply and its points go to the other
  groups (docs/rubric.md), so a 2025 or module 17 submission loses nothing.
- **Bools as dimensions** (KV-CON-5): refused, with `TypeError` or `ValueError`, in every
  release: True is not a dimension, and the exception class is an implementation's
  choice as in KV-CON-3.
- **`disable_kv_cache` deleting `_kv_cache`** (as the 2026 course does) conforms: KV-NI-5
  accepts an absent attribute. Printing a banner in `enable` / `disable` conforms.
- **`get` returning copies** (2026) or views conforms (KV-GET-3).
- **Memoization is credited only to a working cache** (KV-MEMO-1/2): counted projections
  are paid only when every decode step equals the uncached forward and the cache holds
  the projected keys and values. An enabled model that never writes its cache also
  projects one row per step; that is not memoization.
"""

EDGES = """\
## Edges where course releases disagree, and what this spec decides

Course releases differ on these points. Each is decided here, with the reason; the
reference implementation (`reference/kv_cache.py`) makes the same decision and says so
where it makes it.

- **Negative layer index: `ValueError`** (KV-BND-2). Some releases accept `-1`, which
  NumPy and Python lists silently map to the last layer; an off-by-one in a layer loop
  then corrupts the cache with no error. Indices at or past `num_layers` raise
  `ValueError` too (KV-BND-1), not NumPy's `IndexError`.
- **`advance()` on a full cache: `ValueError`, `seq_pos` unchanged** (KV-BND-4, KV-BND-5).
  Some releases let `seq_pos` run past `max_seq_len`. Every other rule relies on
  `0 <= seq_pos <= max_seq_len`: past it, `get` could not return `seq_pos` positions.
- **Constructor dimensions: positive ints only** (KV-CON-2, KV-CON-3). Zero or negative:
  `ValueError`. Not an integer (`2.5`, `"4"`, `None`): `TypeError` or `ValueError`, at
  construction. Some releases validate nothing; the mistake then surfaces later as a
  NumPy error inside `update`, or as a cache that holds nothing.
- **Key and value shapes: exactly (B, H, 1, D)** (KV-SHP-1). Shapes NumPy would broadcast
  into the slot (`(1, H, 1, D)` for B > 1, `(B, H, 1, 1)`, `(H, 1, D)`) and multi-token
  shapes are rejected with `ValueError`: broadcasting would silently copy one batch
  element, or one number, everywhere.
- **A call that raises leaves the cache as it was** (KV-BND-5, KV-SHP-2). `seq_pos` and
  every stored value are unchanged, and a good key with a bad value is not half-stored.
  Students catch the error and carry on; a half-done write would poison the sequence.
- **`reset()` clears the data** (KV-RST-2). After a reset nothing written before it is
  ever visible; positions not written since read as zeros. The course says reset clears
  the data "so no stale data from previous generations affects the current one"; a reset
  that only rewinds `seq_pos` keeps old keys where the new sequence has not written.
- **`get` returns views or copies: either conforms** (KV-GET-3). Both are sound designs.
  What `get` must not do is change anything observable. The cache itself, though, must
  hold copies of what `update` received (KV-UPD-3): callers reuse their buffers.
- **A forward of several tokens leaves the cache alone** (KV-MOD-4). In the course design
  multi-token forwards take the original attention; the cache is filled one token at a
  time, as in the decode protocol.
- **`enable_kv_cache` twice** replaces the first patch rather than wrapping it (KV-NI-4);
  **`disable_kv_cache` on a model never enabled** does nothing (KV-NI-3).
"""

UNSPECIFIED = """\
## Deliberately unspecified

These are an implementation's own business; the checks accept every choice.

- Whether `get` returns views of the storage or copies (KV-GET-3), and whether it returns
  the Tensor class or NumPy arrays (the grader reads `.data` when there is one).
- How storage is laid out (one array per layer, one array for all layers, keys and values
  together or apart), as long as it is allocated when the cache is built and is about the
  size `get_memory_usage()` reports (KV-MEM-4).
- What storage holds at positions at or past `seq_pos` (nothing can read them), except that
  `reset` makes old data invisible.
- Where the original attention forward is kept: patching `block.attention.forward` and
  saving the original on the block, or replacing `block.attention` with a wrapper object,
  or anything else that restores it exactly (KV-NI-2).
- Exception messages, except that KV-BND-3's message names the limit that was hit
  (`max_seq_len`, which the position then equals); and exception classes beyond the one
  required: a subclass of `ValueError` (or of the other builtin named) conforms.
- Extra keys in `get_memory_usage()`'s dict, extra attributes and methods.
"""

HOW_CHECKED = """\
## How the checks run

Checks are pytest tests driven by Hypothesis: random small configurations (every
dimension down to 1), replayable data, and a minimal failing example printed as code a
student can paste into Python. Profiles fix the number of examples per check and the
steps per state-machine run; all of them are seeded and keep no example database:

| profile | examples per check | state-machine steps | for |
| --- | --- | --- | --- |
{profiles}

A check may run fewer examples than its profile (an expensive property), never more.
"""

PROFILE_USE = {"quick": "students, while working", "default": "grading", "thorough": "instructors, before a release"}


def _modules_table() -> str:
    layouts = {
        "tinytorch.perf.memoization": "the current course site",
        "tinytorch.generation.kv_cache": "the 2025 package",
        "memoization": "a loose `memoization.py` (next to the student's `tensor.py`)",
    }
    return "\n".join(f"| `{m}` | {layouts.get(m, '')} |" for m in CANDIDATE_MODULES)


def _profiles_table() -> str:
    return "\n".join(
        f"| `{p}` | {profiles.EXAMPLES[p]} | {profiles.STEPS[p]} | {PROFILE_USE.get(p, '')} |" for p in profiles.PROFILES
    )


def _refs(checks: Sequence[Check]) -> str:
    return ", ".join(f"`{c.ref}`" for c in checks) if checks else "**no check yet**"


def render(checks: Sequence[Check] | None = None) -> str:
    """The whole document, as text."""
    if checks is None:
        checks = discover_checks()
    by_clause = checks_by_clause(checks)
    parts = [
        INTRO.format(regenerate=REGENERATE),
        WHERE.format(modules=_modules_table()),
        COURSES,
        EDGES,
        UNSPECIFIED,
        HOW_CHECKED.format(profiles=_profiles_table()),
        "## The clauses, by rubric group\n",
    ]
    for group in GROUPS:
        clauses = [c for c in CLAUSES if c.group == group]
        if not clauses:
            continue
        parts.append(f"### Group `{group}`\n")
        for c in clauses:
            parts.append(
                f"#### {c.id} ({c.level})\n\n{c.text}\n\n*Why:* {c.why}\n\n*Checked by:* {_refs(by_clause[c.id])}\n"
            )
    parts.append("## Clause, test, group\n")
    rows = ["| clause | level | test(s) | group |", "| --- | --- | --- | --- |"]
    for c in CLAUSES:
        rows.append(f"| {c.id} | {c.level} | {'<br>'.join(f'`{x.ref}`' for x in by_clause[c.id]) or '—'} | {c.group} |")
    parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spec.docgen", description="Render docs/spec.md from the clauses and checks.")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help=f"write {DOCUMENT}")
    action.add_argument("--check", action="store_true", help="exit 1 if the document on disk is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        DOCUMENT.parent.mkdir(parents=True, exist_ok=True)
        DOCUMENT.write_text(text)
        print(f"wrote {DOCUMENT}")
        return 0
    if args.check:
        current = DOCUMENT.read_text() if DOCUMENT.exists() else ""
        if current != text:
            print(f"{DOCUMENT} is stale: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

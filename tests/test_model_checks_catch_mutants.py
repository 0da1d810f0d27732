"""The model-level checks catch the bugs they exist for, and pass a correct design they must not punish.

Each mutant is reference/memoization.py (and, where the bug lives there, reference/kv_cache.py)
with one named string edit that must match exactly once, laid out as a loose submission
(memoization.py exposing Tensor, KVCache, enable_kv_cache, disable_kv_cache, importing the
rest from `reference`). The three model-level check files run against it in a subprocess
(quick profile) and the verdicts say which checks failed.

If an edit no longer matches, reference/memoization.py or kv_cache.py changed: update the
edit's `old` text to the new source, keeping the bug the same.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script by its own subprocesses

from spec.results import Verdict, load_verdicts  # noqa: E402
from tests.zoo import course2026  # noqa: E402

CHECK_FILES = ("spec/checks/test_model.py", "spec/checks/test_noninvasive.py", "spec/checks/test_memoization.py")
# Run only for the mutants that exercise _cached_generate (directories named g<i>), to keep
# this test's cost down: the other mutants leave it as the reference has it.
GENERATE_FILE = "spec/checks/test_generate.py"
MEMOIZATION = (ROOT / "reference" / "memoization.py").read_text()
KV_CACHE = (ROOT / "reference" / "kv_cache.py").read_text()
COURSE_2026 = course2026.module("from reference.tensor import Tensor")

DECODE = "test_cached_decoding_equals_uncached_forward"
GREEDY = "test_greedy_generation_is_token_identical"
SIZED = "test_enable_returns_a_cache_sized_to_the_model"
PROMPT = "test_multi_token_forward_with_cache_enabled_is_original_and_leaves_cache"
MISSING = "test_enable_refuses_a_model_without_a_required_attribute"
INDIVISIBLE = "test_enable_refuses_embed_dim_not_divisible_by_num_heads"
RESET = "test_second_sequence_after_reset_equals_uncached"
WEIGHTS = "test_enable_and_cached_decoding_change_no_weight"
DISABLE = "test_disable_restores_bit_identical_outputs"
NEVER = "test_disable_on_a_never_enabled_model_is_a_no_op"
TWICE = "test_enabling_twice_is_harmless"
FLAGS = "test_disable_clears_the_cache_flags"
KV_ROWS = "test_keys_and_values_are_projected_once_per_token"
Q_ROWS = "test_each_step_projects_the_query_of_the_new_token_only"
SCOPE = "test_forward_outside_the_generation_scope_is_original_and_leaves_cache"
GEN_GREEDY = "test_cached_generate_at_temperature_zero_is_greedy"
GEN_RESET = "test_cached_generate_resets_first_and_leaves_seq_pos"
GEN_ARGS = "test_cached_generate_refuses_bad_arguments"


@dataclass(frozen=True)
class Mutant:
    name: str
    old: str
    new: str
    fails: tuple[str, ...]  # checks that must fail (others may fail too, unless `only`)
    only: bool = False  # every other check must pass (a bug only these checks can see)
    file: str = "memoization"  # or "kv_cache", or "course2026" (tests/zoo/course2026.py, the 2026 course's style)
    says: tuple[str, ...] = field(default=())  # phrases that must each be in the message of one of the `fails` checks
    more: tuple[tuple[str, str], ...] = ()  # further (old, new) edits of the same file, applied after the first


# A correct design the spec must not punish: replace block.attention with a wrapper object
# holding the original (nothing saved on the block), a custom ValueError subclass with its
# own wording. Defined after the course-style functions, so these names win.
WRAPPER_DESIGN = '''class EmbedDimError(ValueError):
    pass


class CachedAttention:
    """One block's attention, cached; the original attention object is kept on the wrapper."""

    def __init__(self, original, cache, layer_idx):
        self.original = original
        self.forward = _cached_attention_forward(original, original.forward, cache, layer_idx)

    def __getattr__(self, name):
        return getattr(self.original, name)


def enable_kv_cache(model):
    for name in REQUIRED_ATTRIBUTES:
        getattr(model, name)  # AttributeError, worded by Python
    if model.embed_dim % model.num_heads:
        raise EmbedDimError("heads do not divide the embedding")
    disable_kv_cache(model)
    cache = KVCache(1, model.max_seq_len, model.num_layers, model.num_heads, model.embed_dim // model.num_heads)
    for i, block in enumerate(model.blocks):
        block.attention = CachedAttention(block.attention, cache, i)
    model._kv_cache = cache
    model._cache_enabled = True
    return cache


def disable_kv_cache(model):
    for block in getattr(model, "blocks", []):
        if isinstance(block.attention, CachedAttention):
            block.attention = block.attention.original
    model._kv_cache = None
    model._cache_enabled = False


def _course_disable_kv_cache(model: Any) -> None:'''

# Correct outputs from recomputed projections: keep every token's input and project the
# whole prefix again each step (what "ignores the cache" looks like when it still works).
RECOMPUTE_KV = '''        q = split(attention.q_proj.forward(x))
        inputs = cache.__dict__.setdefault("_inputs", {}).setdefault(layer_idx, [])
        del inputs[cache.seq_pos:]
        inputs.append(np.asarray(x.data))
        prefix = type(x)(np.concatenate(inputs, axis=1))
        n = len(inputs)
        k = np.asarray(attention.k_proj.forward(prefix).data).reshape(batch, n, heads, head_dim).transpose(0, 2, 1, 3)[:, :, -1:]
        v = np.asarray(attention.v_proj.forward(prefix).data).reshape(batch, n, heads, head_dim).transpose(0, 2, 1, 3)[:, :, -1:]
'''
RECOMPUTE_Q = '''        inputs = cache.__dict__.setdefault("_inputs", {}).setdefault(layer_idx, [])
        del inputs[cache.seq_pos:]
        inputs.append(np.asarray(x.data))
        prefix = type(x)(np.concatenate(inputs, axis=1))
        n = len(inputs)
        q = np.asarray(attention.q_proj.forward(prefix).data).reshape(batch, n, heads, head_dim).transpose(0, 2, 1, 3)[:, :, -1:]
        k = split(attention.k_proj.forward(x))
        v = split(attention.v_proj.forward(x))
'''
QKV = '''        q = split(attention.q_proj.forward(x))
        k = split(attention.k_proj.forward(x))
        v = split(attention.v_proj.forward(x))
'''
PATCH_LINE = "        attention.forward = _cached_attention_forward(attention, attention.forward, cache, layer_idx)"
NEVER_ENABLED_GUARD = '''        if not hasattr(block, "_original_attention_forward"):
            continue
'''
CACHE_READ = """        cache.update(layer_idx, Tensor(k), Tensor(v))  # every token is cached, the first one too
        past_k, past_v = cache.get(layer_idx)  # the prefix before this token: (B, H, seq_pos, D)
        keys = np.concatenate([past_k.data, k], axis=2)
        values = np.concatenate([past_v.data, v], axis=2)
"""
NOT_ATTENDED_OLD = "        keys = np.concatenate([past_k.data, k], axis=2)\n        values = np.concatenate([past_v.data, v], axis=2)\n"
NOT_ATTENDED_NEW = ("        keys = past_k.data if cache.seq_pos else k\n"
                    "        values = past_v.data if cache.seq_pos else v\n")
DISABLE_FLAGS = "    model._kv_cache = None\n    model._cache_enabled = False\n"
DISABLE_DOC = '''    """Restore every block's original attention.forward exactly; a no-op if never enabled."""
'''

MUTANTS = (
    Mutant(
        "closure over the loop variable (every layer uses the last block and its index)",
        PATCH_LINE,
        "        attention.forward = lambda x, mask=None: _cached_attention_forward("
        "attention, block._original_attention_forward, cache, layer_idx)(x, mask)",
        (DECODE, GREEDY, PROMPT, RESET),
        says=("closure over the loop variable",),
    ),
    Mutant(
        "closure over the layer index only (right weights, every layer uses the last layer's cache)",
        PATCH_LINE,
        "        attention.forward = (lambda a, o: lambda x, mask=None: _cached_attention_forward("
        "a, o, cache, layer_idx)(x, mask))(attention, attention.forward)",
        (DECODE, RESET),
        says=("its own layer_idx",),
    ),
    Mutant(
        "first token takes the original path and is never cached",
        "        if seq_len != 1:\n",
        "        if seq_len != 1 or cache.seq_pos == 0:\n",
        (DECODE, RESET),
        says=("first token (seq_pos == 0)",),
    ),
    Mutant(
        "attends to the current token only, ignoring the cached prefix",
        "        keys = np.concatenate([past_k.data, k], axis=2)\n        values = np.concatenate([past_v.data, v], axis=2)\n",
        "        keys, values = k, v\n",
        (DECODE, RESET),
    ),
    Mutant("recomputes keys and values for the whole prefix (outputs right)", QKV, RECOMPUTE_KV, (KV_ROWS,), only=True),
    Mutant("recomputes queries for the whole prefix (outputs right)", QKV, RECOMPUTE_Q, (Q_ROWS,), only=True),
    Mutant(
        "scores scaled by 1/head_dim instead of 1/sqrt(head_dim)",
        "/ np.float32(math.sqrt(head_dim))",
        "/ np.float32(head_dim)",
        (DECODE, RESET),
        says=("divides by sqrt(head_dim)",),
    ),
    Mutant(
        "keys and values swapped when cached",
        "cache.update(layer_idx, Tensor(k), Tensor(v))",
        "cache.update(layer_idx, Tensor(v), Tensor(k))",
        (DECODE, RESET),
    ),
    Mutant(
        "disable restores nothing",
        NEVER_ENABLED_GUARD,
        '''        if True:\n            continue\n''',
        (DISABLE, TWICE),
    ),
    Mutant("disable crashes on a never-enabled model", NEVER_ENABLED_GUARD, "", (NEVER,), only=True),
    Mutant("disable leaves _cache_enabled True", DISABLE_FLAGS, "    model._kv_cache = None\n", (FLAGS,), only=True,
           says=("model._cache_enabled must be False",)),
    Mutant("disable sets _cache_enabled = None", DISABLE_FLAGS, "    model._kv_cache = None\n    model._cache_enabled = None\n",
           (FLAGS,), only=True, says=("Got:      None",)),
    Mutant("disable leaves the cache on model._kv_cache", DISABLE_FLAGS, "    model._cache_enabled = False\n", (FLAGS,),
           only=True, says=("the KVCache object enable_kv_cache returned",)),
    Mutant(
        "enabling twice wraps the first patch",
        '''    if getattr(model, "_cache_enabled", False):\n        disable_kv_cache(model)\n''',
        "",
        (TWICE,),
        only=True,
    ),
    Mutant(
        "enable rounds a weight to float16",
        "        attention = block.attention\n",
        "        attention = block.attention\n"
        "        attention.q_proj.weight = attention.q_proj.weight.astype(np.float16).astype(np.float32)\n",
        (WEIGHTS,),
    ),
    Mutant(
        "cache head_dim = embed_dim",
        "model.num_heads, model.embed_dim // model.num_heads)",
        "model.num_heads, model.embed_dim)",
        (SIZED,),
    ),
    Mutant("_cache_enabled never set", "    model._cache_enabled = True\n", "", (SIZED,)),
    Mutant(
        "a multi-token forward resets the cache",
        "            return original(x, mask)",
        "            cache.reset()\n            return original(x, mask)",
        (PROMPT,),
        only=True,
    ),
    Mutant(
        "ValueError instead of AttributeError for a missing attribute",
        'raise AttributeError(f"enable_kv_cache needs',
        'raise ValueError(f"enable_kv_cache needs',
        (MISSING,),
        only=True,
    ),
    Mutant(
        "no divisibility check (head_dim silently floored)",
        "    if model.embed_dim % model.num_heads != 0:\n",
        "    if False:\n",
        (INDIVISIBLE,),
        only=True,
    ),
    Mutant(
        "inert cache: every forward takes the original attention (one row projected per step, nothing cached)",
        "        if seq_len != 1:\n",
        "        if True:\n",
        (KV_ROWS, Q_ROWS, DECODE),
        says=("decodes correctly", "no layer's cache was ever written"),
    ),
    Mutant(
        "keys and values kept beside the cache (outputs right, projected once, the KVCache never written)",
        CACHE_READ,
        """        store = cache.__dict__.setdefault("_beside", {}).setdefault(layer_idx, [])
        del store[cache.seq_pos:]
        store.append((k, v))
        keys = np.concatenate([kk for kk, _ in store], axis=2)
        values = np.concatenate([vv for _, vv in store], axis=2)
""",
        (KV_ROWS, Q_ROWS), says=("holds only zeros",),  # (KV-MOD-4 is not measured either: get() shows nothing)
    ),
    Mutant(
        "2026 style: a single-token forward outside the generation scope takes the cached step",
        "        if seq != 1 or not self.cache._generation_active:\n",
        "        if seq != 1:\n",
        (SCOPE,), only=True, file="course2026", says=("outside `with cache.generation():`",),
    ),
    Mutant(
        "2026 style: _cached_generate does not reset the cache first",
        "    cache.reset()\n    rng = np.random.default_rng(0)\n",
        "    rng = np.random.default_rng(0)\n",
        (GEN_RESET,), only=True, file="course2026", says=("must call cache.reset()",),
    ),
    Mutant(
        "2026 style: _cached_generate also feeds the last new token (seq_pos one too far)",
        "            if i < max_new_tokens - 1:\n",
        "            if i < max_new_tokens - 1 or cache.seq_pos < cache.max_seq_len:\n",
        (GEN_RESET,), only=True, file="course2026", says=("seq_pos = len(prompt) + max_new_tokens - 1",),
    ),
    Mutant(
        "2026 style: _cached_generate samples the first new token from the wrong logits (argmin)",
        "                tok = int(np.argmax(last))\n",
        "                tok = int(np.argmax(last)) if new else int(np.argmin(last))\n",
        (GEN_GREEDY, GEN_RESET), file="course2026",
    ),
    Mutant(
        "2026 style: _cached_generate accepts a temperature that is not finite",
        "    if not np.isfinite(temperature) or temperature < 0:\n",
        "    if temperature < 0:\n",
        (GEN_ARGS,), only=True, file="course2026", says=("temperature is inf",),  # nan fails later, in sampling
    ),
    Mutant(
        "the published release's three defects at once: closure over the loop variable, first token uncached, "
        "current token not attended",
        PATCH_LINE,
        "        attention.forward = lambda x, mask=None: _cached_attention_forward("
        "attention, block._original_attention_forward, cache, layer_idx)(x, mask)",
        (DECODE, RESET),
        says=("closure over the loop variable", "the first token (seq_pos == 0) is never cached", "does not attend to itself"),
        more=(("        if seq_len != 1:\n", "        if seq_len != 1 or cache.seq_pos == 0:\n"), (NOT_ATTENDED_OLD, NOT_ATTENDED_NEW)),
    ),
    Mutant(
        "current token not attended (attends over the cached prefix only)",
        NOT_ATTENDED_OLD, NOT_ATTENDED_NEW,
        (DECODE, RESET),
        says=("does not attend to itself",),
    ),
    Mutant(
        "the multi-token path drops the causal mask",
        "            return original(x, mask)", "            return original(x, None)",
        (PROMPT,), only=True, says=("causal mask was dropped",),
    ),
    Mutant(
        "2026 style: generation() never activates the scope (nothing is ever cached)",
        "        self._generation_active = True\n",
        "        self._generation_active = previous\n",
        (DECODE,), file="course2026", says=("no layer's cache was ever written", "with cache.generation()"),
    ),
    Mutant(
        "reset does not rewind seq_pos",
        "        self.seq_pos = 0\n        for keys, values in zip(",
        "        for keys, values in zip(",
        (RESET,),
        file="kv_cache",
    ),
)

# Correct designs: must pass every check.
CORRECT = (
    Mutant("the reference itself, as a loose module", "", "", ()),
    Mutant("the 2026 course's style: generation scope, CachedAttention stand-in, _split_heads", "", "", (),
           file="course2026"),
    Mutant("wrapper object replacing block.attention", "def disable_kv_cache(model: Any) -> None:", WRAPPER_DESIGN, ()),
    # KV-NI-5 accepts absent flags: the state of a model never enabled.
    Mutant(
        "disable deletes the flags instead of setting them",
        DISABLE_FLAGS,
        '''    for name in ("_kv_cache", "_cache_enabled"):
        if name in vars(model):
            delattr(model, name)
''',
        (),
    ),
    Mutant(
        "disable of a never-enabled model returns at once (sets no flag)",
        DISABLE_DOC,
        DISABLE_DOC + '''    if not getattr(model, "_cache_enabled", False):
        return
''',
        (),
    ),
)

# A softmax without the max subtraction overflows only for scores above ~88 (float32 exp); the
# grader's ordinary models keep |score| near 1-5, so only KV-MOD-7's sharp models (q/k x12)
# see it. The mutant must fail that check alone, with the overflow hint.
SHARP = "test_cached_decoding_survives_large_attention_scores"
NAIVE_SOFTMAX = Mutant(
    "softmax without max subtraction (overflows for scores > 88)",
    "softmax(scores) @ values",
    "(np.exp(scores) / np.exp(scores).sum(axis=-1, keepdims=True)) @ values",
    (SHARP,), only=True, says=("subtract each row's maximum",),
)


def apply(source: str, old: str, new: str, what: str) -> str:
    if not old:
        return source
    count = source.count(old)
    assert count == 1, f"{what}: the edit's old text occurs {count} times in the reference (expected once); update it"
    return source.replace(old, new)


def lay_out(mutant: Mutant, directory: Path) -> Path:
    """Write the mutant as a loose submission; return the directory."""
    directory.mkdir(parents=True)
    memoization = MEMOIZATION
    def edited(source: str) -> str:
        for old, new in ((mutant.old, mutant.new),) + mutant.more:
            source = apply(source, old, new, mutant.name)
        return source

    if mutant.file == "course2026":
        (directory / "memoization.py").write_text(edited(COURSE_2026))
        return directory
    if mutant.file == "kv_cache":
        (directory / "kv_cache.py").write_text(edited(KV_CACHE))
        memoization = apply(memoization, "from reference.kv_cache import KVCache", "from kv_cache import KVCache", "import")
    else:
        memoization = edited(memoization)
    (directory / "memoization.py").write_text(memoization)
    return directory


def pytest_args(submission: Path, results: Path) -> list[str]:
    files = CHECK_FILES + ((GENERATE_FILE,) if submission.name.startswith("g") else ())
    return [*files, f"--kvspec-submission={submission}", "--kvspec-profile=quick", "-p", "no:xdist",
            "-p", "no:cacheprovider", f"--kvspec-results={results}", "-q", "--tb=no"]


def run_in_this_process(jobs: list[tuple[Path, Path]]) -> None:
    """The subprocess: one pytest run per (submission, results), without paying the start-up for each.

    Every submission's module is called `memoization`, so it is dropped from sys.modules
    between runs (the driver puts the new directory first on sys.path)."""
    os.chdir(ROOT)
    for submission, results in jobs:
        for name in ("memoization", "kv_cache"):
            sys.modules.pop(name, None)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            pytest.main(pytest_args(submission, results))


def run_all(mutants: tuple[Mutant, ...], tmp: Path, workers: int = 2) -> dict[str, dict[str, Verdict]]:
    """Run the three check files against every mutant, in `workers` subprocesses; verdicts by mutant, then check."""
    jobs = [(lay_out(m, tmp / f"{'g' if runs_generate(m) else 'm'}{i}"), tmp / f"m{i}.json") for i, m in enumerate(mutants)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVSPEC_", "PYTEST_", "HYPOTHESIS"))}
    procs = []
    for w in range(workers):
        argv = [str(p) for job in jobs[w::workers] for p in job]
        log = (tmp / f"worker{w}.log").open("w")
        procs.append((subprocess.Popen([sys.executable, __file__, *argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        proc.wait(timeout=1200)  # a loaded 2-core machine: minutes, not seconds
        log.close()
    out: dict[str, dict[str, Verdict]] = {}
    for mutant, (_, results) in zip(mutants, jobs):
        logs = "\n".join((tmp / f"worker{w}.log").read_text()[-2000:] for w in range(workers))
        assert results.exists(), f"{mutant.name}: no verdicts written; worker output:\n{logs}"
        out[mutant.name] = {v.name: v for v in load_verdicts(results)}
    return out


def runs_generate(mutant: Mutant) -> bool:
    return mutant.file == "course2026" or not mutant.old


def problems_with(mutant: Mutant, verdicts: dict[str, Verdict], must_pass: bool) -> list[str]:
    failed = {name for name, v in verdicts.items() if not v.passed}
    if len(verdicts) < (18 if runs_generate(mutant) else 15):
        return [f"{mutant.name}: only {len(verdicts)} verdicts"]
    if must_pass:
        return [f"{mutant.name} must pass every check; failed: {sorted(failed)}\n" + verdicts[n].message for n in sorted(failed)][:1]
    out = []
    missed = [name for name in mutant.fails if name not in failed]
    if missed:
        out.append(f"{mutant.name}: expected {missed} to fail; failed: {sorted(failed)}")
    elif mutant.only and failed != set(mutant.fails):
        out.append(f"{mutant.name}: only {list(mutant.fails)} should fail; failed: {sorted(failed)}")
    for phrase in mutant.says:
        if not any(phrase in verdicts[name].message for name in mutant.fails):
            message = "\n\n".join(verdicts[name].message for name in mutant.fails)
            out.append(f"{mutant.name}: no message of {list(mutant.fails)} says {phrase!r}:\n{message}")
    for name in mutant.fails:
        message = verdicts[name].message
        if not (message.startswith("[KV-") and "Minimal example" in message):
            out.append(f"{mutant.name}: {name} did not fail with a student-facing message:\n{message}")
    return out


def test_model_checks_catch_every_mutant_and_pass_correct_designs(tmp_path: Path) -> None:
    # One test, not one per mutant: the runs share two long-lived subprocesses (pytest-xdist
    # would otherwise start the whole batch once per worker, or pay start-up 20 times).
    everything = MUTANTS + (NAIVE_SOFTMAX,) + CORRECT
    verdicts = run_all(everything, tmp_path)
    problems = [p for m in MUTANTS + (NAIVE_SOFTMAX,) for p in problems_with(m, verdicts[m.name], must_pass=False)]
    problems += [p for m in CORRECT for p in problems_with(m, verdicts[m.name], must_pass=True)]
    assert not problems, "\n\n".join(problems)


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    run_in_this_process(list(zip(args[::2], args[1::2])))

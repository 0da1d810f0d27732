"""Helpers shared by the cache-level checks: write a known history, observe a whole cache."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spec.checks._evidence import current
from spec.data import Pattern
from spec.isolation.driver import FloatArray, SubmissionRaised
from spec.session import CacheRef, Session
from spec.strategies import CacheConfig


def write_history(caches: tuple[CacheRef, ...], config: CacheConfig, tokens: int, first_tag: int = 1,
                  tolerate: bool = True) -> int:
    """Decode `tokens` tokens into every cache alike: each layer updates, then advance.
    Keys are pattern(t), values pattern(-t), t distinct per write. Returns the next tag.

    Stops early if the first cache reports seq_pos >= max_seq_len: an update or advance
    that moves seq_pos too far is the update or advance check's business, and running
    into the capacity limit here would fail a check of another group with its error.
    Likewise (unless `tolerate` is False) when an update or advance raises: the history
    is then shorter, the check goes on with it, and the evidence names the owner."""
    if not tolerate:
        return _write_history(caches, config, tokens, first_tag)
    try:
        return _write_history(caches, config, tokens, first_tag)
    except SubmissionRaised as exc:
        s = caches[0].s
        owner = "KV-BND-3" if exc.is_a("ValueError") else "KV-UPD-1"
        current().blocked(owner, f"writing a history of {tokens} tokens raised {exc.type_name}: {exc.message}", s)
        s.record(f"# that call raised {exc.type_name}; the check goes on with the history written so far")
        return first_tag + 10_000  # fresh tags: no later write repeats one of the history's


def _write_history(caches: tuple[CacheRef, ...], config: CacheConfig, tokens: int, first_tag: int) -> int:
    tag = first_tag
    shape = config.token_shape

    def full() -> bool:
        seq_pos = caches[0].seq_pos
        return not isinstance(seq_pos, int) or seq_pos >= config.max_seq_len

    for _ in range(tokens):
        for layer in range(config.num_layers):
            if full():
                return tag
            for cache in caches:
                cache.update(layer, Pattern(tag, shape), Pattern(-tag, shape))
            tag += 1
        if full():
            return tag
        for cache in caches:
            cache.advance()
    return tag


def has_room(cache: CacheRef, config: CacheConfig) -> bool:
    """seq_pos < max_seq_len: another token can be written and advanced past."""
    seq_pos = cache.seq_pos
    return isinstance(seq_pos, int) and seq_pos < config.max_seq_len


@dataclass
class Snapshot:
    """Everything observable about a cache: seq_pos, and get(layer) for every layer."""

    seq_pos: object
    layers: list[tuple[FloatArray, FloatArray]]

    @classmethod
    def of(cls, cache: CacheRef, config: CacheConfig) -> "Snapshot":
        return cls(cache.seq_pos, [cache.get(layer) for layer in range(config.num_layers)])

    def content(self) -> int:
        """How many (layer, position) cells show something other than zeros: what a
        comparison with this snapshot can tell apart. Two empty caches are not equal
        caches, they are no measurement."""
        cells = 0
        for keys, values in self.layers:
            if keys.ndim == 4 and values.ndim == 4:
                for p in range(min(keys.shape[2], values.shape[2])):
                    cells += bool(np.any(keys[:, :, p]) or np.any(values[:, :, p]))
        return cells

    def blocker(self) -> tuple[str, str]:
        """Why a snapshot of a cache that was written shows nothing: the clause to fix first."""
        pos = self.seq_pos
        for layer, (keys, values) in enumerate(self.layers):
            if keys.ndim != 4 or not isinstance(pos, int) or min(keys.shape[2], values.shape[2]) < pos:
                return "KV-GET-1", f"get({layer}) returned shapes {keys.shape}, {values.shape} at seq_pos {pos}"
        return "KV-UPD-1", f"at seq_pos {pos}, every position get returns holds zeros, although update wrote there"

    def witness(self, s: Session, written: bool) -> None:
        """Count this snapshot's content as the check's evidence; if the cache was written
        and shows nothing, note why (the comparison measured nothing)."""
        cells = self.content()
        if cells:
            current().saw(cells)
        elif written:
            blocked_by, why = self.blocker()
            current().blocked(blocked_by, why, s)

    def difference(self, other: "Snapshot") -> Difference | None:
        """The first observable difference between two snapshots (self: expected), or None."""
        if self.seq_pos != other.seq_pos:
            return Difference("seq_pos", "seq_pos", self.seq_pos, other.seq_pos)
        for layer, (mine, theirs) in enumerate(zip(self.layers, other.layers)):
            read = f"get({layer})"
            for kind, name in enumerate(("keys", "values")):
                a, b = mine[kind], theirs[kind]
                if a.shape != b.shape:
                    return Difference(f"get({layer}) {name} shape", read, a.shape, b.shape, f"{name}.data.shape")
                if not np.array_equal(a, b):
                    if a.ndim < 3:
                        return Difference(f"get({layer}) {name}", read, a, b, f"{name}.data")
                    p = next(p for p in range(a.shape[2]) if not np.array_equal(a[:, :, p], b[:, :, p]))
                    return Difference(f"get({layer}) {name}[:, :, {p}, :]", read, a[:, :, p], b[:, :, p],
                                      f"{name}.data[:, :, {p}, :]")
        return None


@dataclass
class Difference:
    where: str  # e.g. "get(1) values[:, :, 2, :]"
    read: str  # the call that shows it: "seq_pos" or "get(1)"
    expected: object
    got: object
    show: str | None = None  # the expression, after `call`, whose value is `got` (None: the call prints it)

    def call(self, cache: CacheRef) -> str:
        """The line a student runs to see it."""
        if self.read == "seq_pos":
            return f"print({cache.name}.seq_pos)"
        return f"keys, values = {cache.name}.{self.read}"

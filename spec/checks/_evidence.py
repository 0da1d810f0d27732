"""No point without a measurement: what a check has measured over all of its examples.

A check that never compared a value it knows was written (the cache showed nothing, an
early return in every example, a twin comparison of two empty caches) has not measured
its clause, whatever the reason, and must not pass. Each check opens an Evidence for its
clause; the code that compares contents counts what it compared (`saw`) and notes why it
could not (`blocked`, with the clause whose failure stood in the way and the example's
script). At the end of the check, no evidence means `NotMeasured`: no credit, reported
as "not measured: blocked by KV-..." with that example.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, ParamSpec

from spec.session import Refused, Session, not_measured

P = ParamSpec("P")


@dataclass
class Evidence:
    clause: str
    default_blocker: str
    measured: int = 0  # values compared that were known to be written (or, for raise checks, raises observed)
    blockers: dict[str, tuple[str, str]] = field(default_factory=dict)  # clause -> (why, script), first seen

    def saw(self, count: int = 1) -> None:
        self.measured += count

    def blocked(self, blocked_by: str, why: str, s: Session | None = None) -> None:
        if blocked_by not in self.blockers:
            self.blockers[blocked_by] = (why, s.script.render() if s is not None else "")

    def require(self) -> None:
        """Raise NotMeasured if nothing was measured."""
        if self.measured:
            return
        if self.blockers:
            blocked_by, (why, script) = next(iter(self.blockers.items()))
        else:
            blocked_by, why, script = self.default_blocker, "no example reached a value this check could compare", ""
        raise not_measured(self.clause, blocked_by, why, script)


_current: Evidence | None = None


def current() -> Evidence:
    """The running check's evidence (a detached one outside `measuring`: counts go nowhere)."""
    return _current if _current is not None else Evidence("KV-IMP-1", "KV-IMP-1")


def measuring(clause: str, default_blocker: str) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """Decorate a check (outside @given): it fails as not measured unless its examples
    measured something. `default_blocker` is named when no example said why."""

    def wrap(test: Callable[P, None]) -> Callable[P, None]:
        @functools.wraps(test)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            global _current
            outer, _current = _current, Evidence(clause, default_blocker)
            try:
                test(*args, **kwargs)
                _current.require()
            finally:
                _current = outer

        return run

    return wrap


def tolerant(example: Callable[P, None]) -> Callable[P, None]:
    """Decorate a check's example function (inside @given): an example that runs into a
    capacity check firing early (Refused) ends there without a verdict; the evidence names
    the bounds clause. The check is judged on the examples that could run."""

    @functools.wraps(example)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            example(*args, **kwargs)
        except Refused as exc:
            current().blockers.setdefault(exc.owner, (
                f"a call below max_seq_len raised {exc.type_name}: {exc.message}", getattr(exc, "kvspec_script", "")))

    return run


def counted(example: Callable[P, None]) -> Callable[P, None]:
    """Decorate an example function (under @tolerant) that measures its clause whenever it
    runs to its end: each example that returns counts once. For the model-level checks,
    whose every example compares logits, tokens or counts; with @tolerant an example cut
    short by a capacity check firing early measures nothing, so a cache that refuses every
    decode earns nothing (rule 4) while one that refuses only the last position is judged
    on the examples that fit below it (rule 5)."""

    @functools.wraps(example)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        example(*args, **kwargs)
        current().saw()

    return run

"""Score a finished `mutmut run`: killed / non-equivalent mutants.

Run from mutmut's working directory (where `mutants/` is):

    python score.py MUTMUT_EXECUTABLE [--markdown FILE] [--fail-under 0.95]

A surviving mutant is equivalent if its function, original line and mutated line match
an entry of equivalent.py (matched by text, not by mutmut's numbering, which shifts
whenever the reference changes; the original line pins the entry to one source line).
Only the status "survived" can be equivalent: a timeout, a suspicious mutant or any
other status that is not "killed" counts against the score and is listed for a look.
Every other survivor is printed as a diff: a missing or weak check.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from equivalent import EQUIVALENT  # noqa: E402


@dataclass
class Mutant:
    name: str
    status: str
    diff: str = ""

    @property
    def function(self) -> str:
        return re.sub(r"__mutmut_\d+$", "", self.name)

    def _changed(self, sign: str) -> str:
        lines = [ln[1:].strip() for ln in self.diff.splitlines() if ln.startswith(sign) and not ln.startswith(sign * 3)]
        return " / ".join(lines)

    @property
    def added(self) -> str:
        """The mutated line(s), stripped: the '+' lines of the diff."""
        return self._changed("+")

    @property
    def removed(self) -> str:
        """The original line(s), stripped: the '-' lines of the diff."""
        return self._changed("-")


def results(mutmut: str) -> list[Mutant]:
    out = subprocess.run([mutmut, "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    mutants = []
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name:
            mutants.append(Mutant(name, status.strip()))
    return mutants


def show(mutmut: str, m: Mutant) -> str:
    return subprocess.run([mutmut, "show", m.name], capture_output=True, text=True).stdout


def equivalent_reason(m: Mutant, entries: list[tuple[str, str, str, str]] = EQUIVALENT) -> str | None:
    """The reason `m` is equivalent, if it survived and matches an entry on function,
    original line and mutated line; else None."""
    if m.status != "survived":
        return None
    for function, original, mutated, reason in entries:
        if m.function.endswith(function) and m.removed == original and m.added == mutated:
            return reason
    return None


@dataclass
class Tally:
    mutants: list[Mutant]
    killed: list[Mutant]
    equivalent: list[tuple[Mutant, str]]
    real: list[Mutant]  # not killed and not equivalent: survivors, timeouts, suspicious ...

    @property
    def counted(self) -> int:
        return len(self.mutants) - len(self.equivalent)

    @property
    def score(self) -> float:
        return len(self.killed) / self.counted if self.counted else 0.0


def tally(mutants: list[Mutant], entries: list[tuple[str, str, str, str]] = EQUIVALENT) -> Tally:
    killed = [m for m in mutants if m.status == "killed"]
    others = [m for m in mutants if m.status != "killed"]
    equivalent = [(m, r) for m in others if (r := equivalent_reason(m, entries)) is not None]
    matched = {id(m) for m, _ in equivalent}
    return Tally(mutants, killed, equivalent, [m for m in others if id(m) not in matched])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mutmut")
    p.add_argument("--markdown", type=Path)
    p.add_argument("--fail-under", type=float, default=0.95)
    args = p.parse_args(argv)

    mutants = results(args.mutmut)
    for m in mutants:
        if m.status != "killed":
            m.diff = show(args.mutmut, m)
    t = tally(mutants)
    statuses: dict[str, int] = {}
    for m in mutants:
        statuses[m.status] = statuses.get(m.status, 0) + 1

    lines = [
        f"mutants: {len(mutants)} ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})",
        f"equivalent survivors: {len(t.equivalent)}",
        f"not killed, not equivalent: {len(t.real)}",
        f"score: {len(t.killed)}/{t.counted} non-equivalent mutants killed = {t.score:.1%}",
        "",
        "Equivalent survivors:",
    ]
    lines += [f"- `{m.function.split('.')[-1]}`: `{m.removed}` -> `{m.added}`: {r}" for m, r in t.equivalent]
    lines += ["", "Not killed and not equivalent (missing or weak checks, timeouts):"]
    for m in t.real:
        lines += [f"- {m.name} ({m.status})", "```diff", m.diff.strip(), "```"]
    if not t.real:
        lines.append("- none")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0 if t.score >= args.fail_under else 1


if __name__ == "__main__":
    sys.exit(main())

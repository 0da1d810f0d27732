"""Score a finished `mutmut run`: killed / non-equivalent mutants.

Run from mutmut's working directory (where `mutants/` is):

    python score.py MUTMUT_EXECUTABLE [--markdown FILE] [--fail-under 0.95]

A surviving mutant is equivalent if its function and mutated line match an entry of
equivalent.py (matched by text, not by mutmut's numbering, which shifts whenever the
reference changes). Every other survivor is printed as a diff: a missing or weak check.
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

    @property
    def added(self) -> str:
        """The mutated line(s), stripped: the '+' lines of the diff."""
        lines = [ln[1:].strip() for ln in self.diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
        return " / ".join(lines)


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


def equivalent_reason(m: Mutant) -> str | None:
    for function, line, reason in EQUIVALENT:
        if m.function.endswith(function) and m.added == line:
            return reason
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mutmut")
    p.add_argument("--markdown", type=Path)
    p.add_argument("--fail-under", type=float, default=0.95)
    args = p.parse_args(argv)

    mutants = results(args.mutmut)
    killed = [m for m in mutants if m.status == "killed"]
    survived = [m for m in mutants if m.status != "killed"]
    for m in survived:
        m.diff = show(args.mutmut, m)
    equivalent = [(m, r) for m in survived if (r := equivalent_reason(m)) is not None]
    real = [m for m in survived if equivalent_reason(m) is None]
    counted = len(mutants) - len(equivalent)
    score = len(killed) / counted if counted else 0.0
    statuses: dict[str, int] = {}
    for m in mutants:
        statuses[m.status] = statuses.get(m.status, 0) + 1

    lines = [
        f"mutants: {len(mutants)} ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})",
        f"equivalent survivors: {len(equivalent)}",
        f"non-equivalent survivors: {len(real)}",
        f"score: {len(killed)}/{counted} non-equivalent mutants killed = {score:.1%}",
        "",
        "Equivalent survivors:",
    ]
    lines += [f"- `{m.function.split('.')[-1]}`: `{m.added}`: {r}" for m, r in equivalent]
    lines += ["", "Non-equivalent survivors (missing or weak checks):"]
    for m in real:
        lines += [f"- {m.name} ({m.status})", "```diff", m.diff.strip(), "```"]
    if not real:
        lines.append("- none")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0 if score >= args.fail_under else 1


if __name__ == "__main__":
    sys.exit(main())

"""`python -m spec merge SHARD_OUT... --out DIR`: one class's shard outputs -> one output.

Each `python -m spec grade CLASS --shard K/N --out SHARD_OUT` writes the reports of its
part of the class and a grades.json naming the whole class. Merging copies every
submission's reports into DIR and writes the gradebook, class summary and grades.json a
single `grade CLASS --out DIR` would have written (byte-identical gradebook and summary).
Exit codes: 0 merged; 2 the shards do not make one class (a shard missing or given twice,
different classes), with a one-line message.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from spec.grader import batch, reports

PROG = "python -m spec merge"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise batch.MergeError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Combine the outputs of `python -m spec grade --shard K/N` into one class output.")
    p.add_argument("shards", nargs="+", metavar="SHARD_OUT", help="the --out directory of every shard")
    p.add_argument("--out", metavar="DIR", required=True, help="where the combined reports go")
    return p


def run(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    members, grades, sources = batch.read_shards([Path(d) for d in args.shards])
    out = reports.OutDir(Path(args.out), batch=True)
    for member, source in zip(members, sources):
        target = out.subdir(member.name)
        for name in reports.REPORT_FILES:
            if (source / member.name / name).is_file():
                shutil.copyfile(source / member.name / name, target / name)
    batch.write_class(out.path, members, dict(enumerate(grades)), None)
    print(f"merged {len(args.shards)} shard(s), {len(members)} submission(s): {out.path}/gradebook.csv, {out.path}/class-summary.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except (batch.MergeError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

"""python -m tests.zoo {list, show NAME, materialize NAME DIR, grade [NAME ...], seeds [NAME ...]}"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.zoo.variants import ZooError, check_registry, diff, materialize, registry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.zoo", description="The zoo of buggy, correct and hostile submissions.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("seeds", help="grade every bug with several seeds (python -m tests.zoo seeds --help)")
    sub.add_parser("list", help="every variant: kind, groups that must fail, description")
    s = sub.add_parser("show", help="the variant as a unified diff against base/")
    s.add_argument("name")
    m = sub.add_parser("materialize", help="write the variant's submission into DIR")
    m.add_argument("name")
    m.add_argument("dir", type=Path)
    g = sub.add_parser("grade", help="grade variants (all by default) with the real grader and print the table")
    g.add_argument("names", nargs="*")
    g.add_argument("--profile", default="quick", choices=("quick", "default", "thorough"))
    g.add_argument("--jobs", type=int, default=1, help="--jobs of each grader invocation")
    g.add_argument("--shards", type=int, default=2, help="concurrent grader invocations")
    g.add_argument("--workdir", type=Path, help="where submissions and reports go (default: a new temporary directory)")
    g.add_argument("--table", type=Path, help="also write the table to this file")
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["seeds"]:
        from tests.zoo.seeds import main as seeds

        return seeds(argv[1:])
    args = p.parse_args(argv)

    variants = registry()
    try:
        if args.cmd == "list":
            check_registry(variants)
            for v in variants.values():
                groups = " ".join(sorted(v.expect_fail_groups)) or "-"
                print(f"{v.name:40} {v.kind:12} {groups:24} {v.description}")
        elif args.cmd == "show":
            v = variants[args.name]
            print(f"# {v.name} ({v.kind}): {v.description}")
            if v.expect_fail_groups:
                print(f"# must fail: {' '.join(sorted(v.expect_fail_groups))}")
            if v.twin or v.expect_score is not None:
                print(f"# expected score: {'that of ' + v.twin if v.twin else v.expect_score}")
            sys.stdout.write(diff(v))
        elif args.cmd == "materialize":
            print(materialize(variants[args.name], args.dir))
        else:
            from tests.zoo.runner import PROBLEMS, run_zoo

            unknown = [n for n in args.names if n not in variants]
            if unknown:
                print(f"unknown variants: {unknown}", file=sys.stderr)
                return 2
            verdicts, run, text = run_zoo(args.profile, args.jobs, args.shards, args.names or None, args.workdir)
            print(text)
            if args.table:
                args.table.write_text(text + "\n")
            bad = [x for x in verdicts if x.outcome in PROBLEMS]
            return 1 if bad or any(c != 0 for c in run.exit_codes) else 0
    except KeyError as exc:
        print(f"no variant named {exc.args[0]}; see python -m tests.zoo list", file=sys.stderr)
        return 2
    except ZooError as exc:
        print(f"zoo error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

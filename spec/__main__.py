"""`python -m spec grade ...`: the autograder (see docs/instructors.md)."""

from __future__ import annotations

import sys

USAGE = (
    "usage: python -m spec grade [SUBMISSION_DIR ...] [options]   (python -m spec grade --help)\n"
    "       python -m spec merge SHARD_OUT... --out DIR   combine the outputs of grade --shard K/N\n"
    "       python -m spec rubric      print the default rubric (a starting point for --rubric FILE)"
)


def main(argv: list[str]) -> int:
    if argv[:1] == ["grade"]:
        from spec.grader.cli import main as grade

        return grade(argv[1:])
    if argv[:1] == ["merge"]:
        from spec.grader.merge import main as merge

        return merge(argv[1:])
    if argv == ["rubric"]:
        from spec.grader.rubric import DEFAULT_RUBRIC

        sys.stdout.write(DEFAULT_RUBRIC.read_text(encoding="utf-8"))
        return 0
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    what = f"unknown command {argv[0]!r}" if argv else "no command"
    print(f"python -m spec: error: {what}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image.
# The autograder zip holds this file, run_autograder, kvspec/ (a copy of the kvspec
# repository: `git archive --prefix=kvspec/ HEAD`) and optionally rubric.toml (the
# course's rubric). Gradescope unzips it into /autograder/source. See docs/instructors.md.
# AUTOGRADER_ROOT exists so the script can be tried outside Gradescope.
set -euo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
apt-get update
apt-get install -y --no-install-recommends python3 python3-pip python3-venv
python3 -m venv "$ROOT/venv"
"$ROOT/venv/bin/pip" install --upgrade pip
"$ROOT/venv/bin/pip" install "$ROOT/source/kvspec"
# Sanity check at build time: the bundled reference gets full marks, under the course's
# rubric if the zip has one (a rubric the grader refuses stops the build here, not later
# in front of a student).
RUBRIC=()
if [ -f "$ROOT/source/rubric.toml" ]; then
    RUBRIC=(--rubric "$ROOT/source/rubric.toml")
fi
"$ROOT/venv/bin/python" -m spec grade --profile quick --out "$ROOT/selftest" --quiet "${RUBRIC[@]}"
"$ROOT/venv/bin/python" -c '
import json, sys
tests = json.load(open(sys.argv[1]))["tests"]
failed = [t["name"] for t in tests if t["status"] != "passed"]
sys.exit(f"self-test: the reference failed {failed}" if failed else 0)
' "$ROOT/selftest/results.json"

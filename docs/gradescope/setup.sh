#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image.
# The autograder zip holds this file, run_autograder, and kvspec/ (a copy of the kvspec
# repository: `git archive --prefix=kvspec/ HEAD`). See docs/instructors.md.
set -euo pipefail
apt-get update
apt-get install -y --no-install-recommends python3 python3-pip python3-venv
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install --upgrade pip
/autograder/venv/bin/pip install /autograder/source/kvspec
# Sanity check at build time: the bundled reference must get full marks.
/autograder/venv/bin/python -m spec grade --profile quick --out /tmp/kvspec-selftest --fail-under 100

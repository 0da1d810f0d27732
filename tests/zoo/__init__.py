"""The zoo: buggy, correct-alternative and hostile submissions that prove the grader's verdicts.

See docs/zoo.md; `python -m tests.zoo --help`.
"""

"""The autograder behind `python -m spec grade`: runs the suite on submissions in a
pytest subprocess (never importing their code), scores the verdicts with a rubric and
writes Gradescope, JUnit and Markdown reports."""

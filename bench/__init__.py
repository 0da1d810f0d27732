"""Benchmarks of the reference (figures, never assertions). Run: `nox -s bench` or `python -m bench.decode`."""

"""pytest plugin loaded only in the grader's own pytest subprocess (`-p spec.grader.stream`).

Two jobs, both in the controlling pytest process (never in an xdist worker, never in a
process that runs submission code):

* `--kvspec-grader-manifest=FILE` (with `--collect-only`): write the list of checks
  (nodeid, name, clauses, group) before any submission code has run. The grader scores
  against this list, so a check that never reports a verdict still counts, as failed.
* `--kvspec-grader-stream-fd=M --kvspec-grader-key-fd=N`: write one line per finished
  check, the verdict and an HMAC over it, to the inherited pipe M (the grader holds its
  other end; no path names it). The key arrives on the inherited pipe N, read and closed
  at configure time, before any worker exists: this process sends one byte on the ready
  pipe (--kvspec-grader-ready-fd) and the grader, having checked that it is non-dumpable
  (spec/grader/run.py's bootstrap made it so), only then writes the key. A line is
  believed only if its HMAC checks. Lines are flushed as they are written, so if the
  run is killed at its time limit the checks already finished keep their verdicts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from spec.clauses import group_of
from spec.results import Collector, Verdict


def check_name(nodeid: str) -> str:
    """test_get.py::test_prefix[x] -> test_prefix[x]; test_m.py::TestMachine::runTest -> TestMachine."""
    parts = nodeid.split("::")[1:] or [nodeid]
    if len(parts) > 1 and parts[-1] == "runTest":
        parts = parts[:-1]
    return ".".join(parts)


def sign(key: bytes, verdict: dict[str, Any]) -> str:
    return hmac.new(key, json.dumps(verdict, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvspec-grader", "used by `python -m spec grade` only")
    group.addoption("--kvspec-grader-manifest", dest="kvspec_grader_manifest", default=None)
    group.addoption("--kvspec-grader-stream-fd", dest="kvspec_grader_stream_fd", default=None, type=int)
    group.addoption("--kvspec-grader-key-fd", dest="kvspec_grader_key_fd", default=None, type=int)
    group.addoption("--kvspec-grader-ready-fd", dest="kvspec_grader_ready_fd", default=None, type=int)
    group.addoption("--kvspec-grader-only-group", dest="kvspec_grader_only_group", default=None)
    group.addoption("--kvspec-grader-skip-group", dest="kvspec_grader_skip_group", default=None)
    group.addoption("--kvspec-grader-groups", dest="kvspec_grader_groups", default=None)  # --groups: a,b


def _group(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("kvspec")
    return group_of([str(a) for a in marker.args]) if marker is not None else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run only one group's checks, or all but one group's, and of those only the groups of
    --groups (in every process that collects)."""
    only = config.getoption("kvspec_grader_only_group")
    skip = config.getoption("kvspec_grader_skip_group")
    chosen = config.getoption("kvspec_grader_groups")
    if only is None and skip is None and chosen is None:
        return
    among = None if chosen is None else set(str(chosen).split(","))
    keep = [i for i in items if (only is None or _group(i) == only) and (skip is None or _group(i) != skip)
            and (among is None or _group(i) in among)]
    dropped = [i for i in items if i not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


class Stream:
    def __init__(self, config: pytest.Config, fd: int, key: bytes) -> None:
        self.config = config
        self.key = key
        os.set_inheritable(fd, False)  # no worker of this run gets the verdict channel
        self.file = os.fdopen(fd, "w", encoding="utf-8")
        self.sent: set[str] = set()

    def _collector(self) -> Collector | None:
        plugin = self.config.pluginmanager.get_plugin("kvspec-collector")
        return plugin if isinstance(plugin, Collector) else None

    def _send(self, verdict: Verdict) -> None:
        data = asdict(verdict)
        self.file.write(json.dumps({"verdict": data, "mac": sign(self.key, data)}) + "\n")
        self.file.flush()
        self.sent.add(verdict.nodeid)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        collector = self._collector()
        verdict = collector.verdicts.get(report.nodeid) if collector else None
        if verdict is not None and report.nodeid not in self.sent:
            self._send(verdict)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        collector = self._collector()
        if collector is not None:
            for nodeid, verdict in sorted(collector.verdicts.items()):
                if nodeid not in self.sent:
                    self._send(verdict)
        self.file.close()


class Manifest:
    def __init__(self, path: Path) -> None:
        self.path = path

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        entries = []
        for item in session.items:
            marker = item.get_closest_marker("kvspec")
            if marker is None:
                continue
            clauses = [str(a) for a in marker.args]
            entries.append({"nodeid": item.nodeid, "name": check_name(item.nodeid), "clauses": clauses, "group": group_of(clauses)})
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(entries, key=lambda e: str(e["nodeid"])), indent=1))
        os.replace(tmp, self.path)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller streams
    manifest = config.getoption("kvspec_grader_manifest")
    if manifest:
        config.pluginmanager.register(Manifest(Path(manifest)), "kvspec-grader-manifest")
    stream = config.getoption("kvspec_grader_stream_fd")
    fd = config.getoption("kvspec_grader_key_fd")
    ready = config.getoption("kvspec_grader_ready_fd")
    if stream is not None and fd is not None:
        if ready is not None:  # the grader writes the key only after this byte (and a check that we are non-dumpable)
            os.write(ready, b"1")
            os.close(ready)
        with os.fdopen(fd, "rb") as pipe:
            key = pipe.read(64)
        if len(key) < 32:
            raise pytest.UsageError("kvspec grader: no key on the key pipe")
        config.pluginmanager.register(Stream(config, stream, key), "kvspec-grader-stream")

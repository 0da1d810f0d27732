"""The isolated worker: runs a LocalDriver on a submission, one request at a time.

Started by `spec.isolation.isolated.IsolatedDriver` as

    python -m spec.isolation.worker REQUEST_FD RESPONSE_FD MEMORY_MB PARENT_PID

with the protocol on the two pipe descriptors named (see spec.isolation.protocol), stdin on
/dev/null, and stdout/stderr (descriptors 1 and 2) already on the capture pipe the
grader drains, so everything the submission prints, and Python's own errors, is captured
and nothing it prints can reach the protocol. The cwd is a fresh, empty temporary
directory the grader deletes afterwards.

Before any submission code is imported the worker caps its address space (RLIMIT_AS,
MEMORY_MB; 0 = no cap) and core dumps, asks the kernel to SIGKILL it if the grader dies,
and enables faulthandler (a segfault prints the Python stack into the captured output).

It answers with observations only: what a driver call returned (plain data) or raised
(a description). It never decides, or reports, whether a check passed. The one message
that is not an answer is the phase message, sent just before the submission's import
begins (see spec.isolation.protocol): the grader blames itself for any failure before it.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from spec.isolation import procfs, protocol

OPS = (
    "describe",
    "new_cache",
    "update",
    "update_then_mutate",
    "get",
    "advance",
    "reset",
    "attribute",
    "memory_usage",
    "update_allocation",
    "construction_retained",
    "new_model",
    "forward",
    "enable",
    "disable",
    "model_state",
    "has_generation",
    "forward_in_generation",
    "cached_generate",
)


def limit_resources(memory_mb: int) -> None:
    import resource

    if memory_mb > 0:
        cap = memory_mb * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def flush_output() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:  # a submission may have replaced the streams with anything
            pass


def _describe_error(exc: BaseException) -> dict[str, Any]:
    """The err field of a response; must never raise, whatever the exception's __str__ does."""
    from spec.isolation.driver import SubmissionRaised, SubmissionUnavailable

    try:
        if isinstance(exc, SubmissionRaised):
            return {
                "kind": "raised",
                "type_name": str(exc.type_name),
                "mro": [str(n) for n in exc.mro],
                "message": str(exc.message),
                "traceback": str(exc.traceback),
            }
        if isinstance(exc, SubmissionUnavailable):
            return {"kind": "unavailable", "detail": str(exc.detail), "traceback": str(exc.traceback)}
        from spec.isolation.local import describe_exception

        d = describe_exception(exc)
        return {"kind": "internal", "type_name": d.type_name, "message": d.message, "traceback": d.traceback}
    except BaseException:
        return {"kind": "internal", "type_name": "Exception", "message": "<the error could not be described>", "traceback": ""}


def _too_large(op: str, detail: str) -> dict[str, Any]:
    # The submission returned more data than a message may hold: a contract violation, so
    # it satisfies no property that expects an exception (see spec.isolation.local.contract_error).
    return {
        "kind": "raised",
        "type_name": "ContractViolation",
        "mro": ["ContractViolation"],
        "message": f"{op} returned too much data to send back ({detail})",
        "traceback": "",
    }


def serve(request_fd: int, response_fd: int) -> None:
    """Answer requests until the grader closes the request pipe."""
    from spec.discovery import Target
    from spec.isolation.local import LocalDriver

    driver: LocalDriver | None = None
    requests = protocol.Reader(request_fd)

    def announce_import() -> None:
        # From here on submission code may run; everything before was the grader's own.
        flush_output()
        protocol.write_blocking(response_fd, protocol.frame({"seq": seq, "phase": "import"}))

    while True:
        body = requests.read_blocking()
        if body is None:
            return
        message = protocol.parse(body)
        if type(message) is not dict or type(message.get("seq")) is not int:
            raise protocol.ProtocolError("request without a sequence number")
        seq, op = message["seq"], message.get("op")
        reply: dict[str, Any]
        try:
            args = protocol.decode(message.get("args"))
            if type(args) is not list:
                raise protocol.ProtocolError("request arguments must be a list")
            if op == "init":
                if driver is not None or len(args) != 1 or type(args[0]) is not Target:
                    raise protocol.ProtocolError("init takes one Target, once")
                driver = LocalDriver(args[0])
                driver.before_import = announce_import
                result: object = None
            elif op in OPS and driver is not None:
                method: Callable[..., object] = getattr(driver, op)
                result = method(*args)
            else:
                raise protocol.ProtocolError(f"unknown operation {str(op)[:40]!r} (or no init yet)")
            reply = {"seq": seq, "ok": protocol.encode(result)}
        except BaseException as exc:  # everything the submission raised, and our own failures
            reply = {"seq": seq, "err": _describe_error(exc)}
        flush_output()
        try:
            data = protocol.frame(reply)
        except protocol.ProtocolError as exc:
            data = protocol.frame({"seq": seq, "err": _too_large(str(op), str(exc))})
        protocol.write_blocking(response_fd, data)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    request_fd, response_fd, memory_mb, parent = (int(a) for a in args)
    procfs.die_with_parent(parent)  # an infinite loop cannot outlive a grader that was itself killed
    limit_resources(memory_mb)
    import faulthandler

    faulthandler.enable()
    # The grader's modules, before the submission's directory goes on sys.path, so a
    # submission shipping its own numpy.py or spec/ cannot replace them.
    import numpy  # noqa: F401

    import reference.tensor  # noqa: F401
    import spec.isolation.local  # noqa: F401

    serve(request_fd, response_fd)
    flush_output()
    os._exit(0)  # skip interpreter teardown: submission objects' __del__ and atexit hooks


if __name__ == "__main__":
    main()

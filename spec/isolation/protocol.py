"""The wire between the grader and an isolated worker: framed JSON, never pickle.

A message is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON,
at most `MAX_MESSAGE` bytes. Requests are `{"seq": n, "op": name, "args": [...]}`;
responses are `{"seq": n, "ok": value}` or `{"seq": n, "err": {...}}`. Once per worker,
just before it imports the submission (during the first request that needs it), the worker
sends `{"seq": n, "phase": "import"}` ahead of that request's response: until then no
submission code has run, so a failure before it is the grader's, never the submission's.

Values are JSON scalars (None, bool, int, float including NaN/Infinity, str) and JSON
arrays (lists). Every JSON object on the wire is a tagged value: `{"$": "tuple", "v": [...]}`,
`{"$": "dict", "v": [[key, value], ...]}`, `{"$": "nd", "dtype": "<f8" | "<i8", "shape": [...],
"b64": "..."}`, or one of the driver's dataclasses by name. Nothing else decodes.

The grader decodes every response twice over: `decode` rebuilds plain values (arrays become
float64/int64 ndarrays it allocates itself, from bytes, with the shape checked against the
byte count), and the `expect_*` functions check that the value has the type the called
operation returns. Anything else is a `ProtocolError`, which the isolated driver reports as
`SubmissionCrashed("protocol", ...)` (or, before the phase message, as a `GraderFault`). A response carries observations only (what a call
returned or raised); there is no field that says whether a check passed.
"""

from __future__ import annotations

import base64
import json
import math
import os
import select
import struct
import time
from dataclasses import fields
from typing import Any, Callable

import numpy as np

from spec.discovery import Target
from spec.isolation.driver import Measurement, ModelConfig, ModelState, SubmissionInfo

MAX_MESSAGE = 64 * 1024 * 1024  # bytes of JSON in one message
HEADER = struct.Struct(">I")
MAX_DEPTH = 32  # nesting of tagged values
MAX_NDIM = 32
MAX_TEXT = 20_000  # longest error text kept from the worker (messages, tracebacks)
DTYPES = {"<f8": np.float64, "<i8": np.int64}


class ProtocolError(Exception):
    """A message that is not what the protocol allows."""


class PeerClosed(Exception):
    """The other end closed its pipe (the worker exited, or closed the descriptor)."""


class Deadline(Exception):
    """The time allowed for this message ran out."""


# -- framing -------------------------------------------------------------------------


def frame(message: object) -> bytes:
    """JSON-encode and length-prefix one message (raises ProtocolError if too large)."""
    body = json.dumps(message, separators=(",", ":"), allow_nan=True).encode("utf-8")
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {MAX_MESSAGE}-byte limit")
    return HEADER.pack(len(body)) + body


def parse(body: bytes) -> Any:
    """UTF-8 JSON -> Python (lists, dicts, scalars), or ProtocolError."""
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:  # ValueError includes JSONDecodeError
        raise ProtocolError(f"malformed message ({type(exc).__name__}: {str(exc)[:200]})") from None


def write_blocking(fd: int, data: bytes) -> None:
    """Write all of `data` to a blocking descriptor (the worker's side)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


CHUNK = 1 << 16  # bytes per read: a pipe's default capacity


class Reader:
    """Messages from one pipe. Reads in chunks and keeps what follows a message for the
    next one, so a small message costs one read. Never holds more than one message and
    one chunk: it stops reading once a message is complete, and refuses an announced
    length over MAX_MESSAGE before reading any of it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def _take(self) -> bytes | None:
        if len(self.buffer) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self.buffer)
        if length > MAX_MESSAGE:
            raise ProtocolError(f"a message of {length} bytes was announced; the limit is {MAX_MESSAGE}")
        end = HEADER.size + length
        if len(self.buffer) < end:
            return None
        body = bytes(self.buffer[HEADER.size : end])
        del self.buffer[:end]
        return body

    def read_blocking(self) -> bytes | None:
        """The next message body from a blocking descriptor; None at a clean end of file
        (the worker's side)."""
        while True:
            body = self._take()
            if body is not None:
                return body
            chunk = os.read(self.fd, CHUNK)
            if not chunk:
                if self.buffer:
                    raise PeerClosed("the pipe closed in the middle of a message")
                return None
            self.buffer += chunk

    def read(self, deadline: float) -> bytes:
        """The next message body from a non-blocking descriptor before `deadline`
        (time.monotonic; the grader's side). Raises Deadline, PeerClosed or ProtocolError."""
        while True:
            body = self._take()
            if body is not None:
                return body
            if time.monotonic() >= deadline:
                raise Deadline()
            try:
                chunk = os.read(self.fd, CHUNK)
            except BlockingIOError:
                _wait(self.fd, select.POLLIN, deadline)
                continue
            if not chunk:
                raise PeerClosed("in the middle of a message" if self.buffer else "before answering")
            self.buffer += chunk


def _wait(fd: int, events: int, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Deadline()
    poller = select.poll()
    poller.register(fd, events)
    if not poller.poll(max(1, math.ceil(remaining * 1000))):
        if time.monotonic() >= deadline:
            raise Deadline()


def write_with_deadline(fd: int, data: bytes, deadline: float) -> None:
    """Write all of `data` to a non-blocking descriptor before `deadline` (time.monotonic)."""
    view = memoryview(data)
    while view:
        if time.monotonic() >= deadline:
            raise Deadline()
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            _wait(fd, select.POLLOUT, deadline)
            continue
        except (BrokenPipeError, ConnectionResetError):
            raise PeerClosed("the worker closed its end of the request pipe") from None
        view = view[n:]


# -- values ---------------------------------------------------------------------------

_DATACLASSES: dict[str, type] = {
    "SubmissionInfo": SubmissionInfo,
    "ModelConfig": ModelConfig,
    "ModelState": ModelState,
    "Measurement": Measurement,
    "Target": Target,
}


def encode(value: object) -> Any:
    """A plain value (see the module docstring) -> JSON-ready data. Raises ProtocolError
    for anything else, so a submission object can never be sent by accident."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iub":
            dtype = "<i8"
        elif value.dtype.kind == "f":
            dtype = "<f8"
        else:
            raise ProtocolError(f"cannot send an array of dtype {value.dtype}")
        data = np.ascontiguousarray(value, dtype=DTYPES[dtype]).tobytes()
        return {"$": "nd", "dtype": dtype, "shape": list(value.shape), "b64": base64.b64encode(data).decode("ascii")}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {"$": "tuple", "v": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"$": "dict", "v": [[encode(k), encode(v)] for k, v in value.items()]}
    name = type(value).__name__
    if name in _DATACLASSES and type(value) is _DATACLASSES[name]:
        return {"$": name, "v": {f.name: encode(getattr(value, f.name)) for f in fields(_DATACLASSES[name])}}
    raise ProtocolError(f"cannot send a value of type {type(value).__name__}")


def decode(data: Any, depth: int = 0) -> Any:
    """JSON data -> plain values; arrays are fresh float64/int64 ndarrays built from bytes.
    Dataclasses are rebuilt with their field types checked. Raises ProtocolError."""
    if depth > MAX_DEPTH:
        raise ProtocolError("values nested too deeply")
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [decode(v, depth + 1) for v in data]
    if not isinstance(data, dict):
        raise ProtocolError(f"unexpected JSON value of type {type(data).__name__}")
    tag = data.get("$")
    if tag == "nd":
        return _decode_array(data)
    if tag == "tuple":
        items = data.get("v")
        if not isinstance(items, list) or set(data) != {"$", "v"}:
            raise ProtocolError("malformed tuple")
        return tuple(decode(v, depth + 1) for v in items)
    if tag == "dict":
        pairs = data.get("v")
        if not isinstance(pairs, list) or set(data) != {"$", "v"}:
            raise ProtocolError("malformed dict")
        out: dict[Any, Any] = {}
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2:
                raise ProtocolError("malformed dict entry")
            key = decode(pair[0], depth + 1)
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise ProtocolError(f"unhashable dict key of type {type(key).__name__}")
            out[key] = decode(pair[1], depth + 1)
        return out
    if isinstance(tag, str) and tag in _DATACLASSES:
        values = data.get("v")
        if not isinstance(values, dict) or set(data) != {"$", "v"}:
            raise ProtocolError(f"malformed {tag}")
        return _CHECKERS[tag]({k: decode(v, depth + 1) for k, v in values.items()})
    raise ProtocolError(f"unknown tagged value {str(tag)[:40]!r}")


def _decode_array(data: dict[str, Any]) -> np.ndarray[Any, Any]:
    if set(data) != {"$", "dtype", "shape", "b64"}:
        raise ProtocolError("malformed array")
    dtype, shape, text = data["dtype"], data["shape"], data["b64"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError(f"array dtype must be one of {sorted(DTYPES)}, got {str(dtype)[:40]!r}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(type(n) is int and n >= 0 for n in shape):
        raise ProtocolError("array shape must be a list of at most 32 non-negative ints")
    count = math.prod(shape)
    if count * 8 > MAX_MESSAGE:
        raise ProtocolError(f"array of shape {tuple(shape)} is larger than a message can hold")
    if not isinstance(text, str) or len(text) != 4 * math.ceil(count * 8 / 3):
        raise ProtocolError(f"array data does not match its shape {tuple(shape)}")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise ProtocolError("array data is not base64") from None
    if len(raw) != count * 8:
        raise ProtocolError(f"array data does not match its shape {tuple(shape)}")
    # frombuffer gives a read-only view of our own bytes; astype makes the plain, owned,
    # native-endian float64/int64 ndarray every comparison sees.
    return np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape).astype(DTYPES[dtype], copy=True)


# -- the types each operation returns --------------------------------------------------


def expect_int(value: Any, what: str = "a handle") -> int:
    if type(value) is not int:
        raise ProtocolError(f"expected {what} (int), got {type(value).__name__}")
    return value


def expect_str(value: Any, what: str) -> str:
    if type(value) is not str:
        raise ProtocolError(f"expected {what} (str), got {type(value).__name__}")
    return value


def expect_bool(value: Any) -> bool:
    if type(value) is not bool:
        raise ProtocolError(f"expected a bool, got {type(value).__name__}")
    return value


def expect_int_list(value: Any) -> list[int]:
    if type(value) is not list or not all(type(v) is int for v in value):
        raise ProtocolError("expected a list of ints")
    return list(value)


def expect_none(value: Any) -> None:
    if value is not None:
        raise ProtocolError(f"expected no result, got {type(value).__name__}")


def expect_float_array(value: Any, what: str = "an array") -> np.ndarray[Any, np.dtype[np.float64]]:
    if type(value) is not np.ndarray or value.dtype != np.float64:
        raise ProtocolError(f"expected {what} (float64 array), got {type(value).__name__}")
    return value


def expect_pair_of_arrays(value: Any) -> tuple[np.ndarray[Any, np.dtype[np.float64]], np.ndarray[Any, np.dtype[np.float64]]]:
    if type(value) is not tuple or len(value) != 2:
        raise ProtocolError("expected a (keys, values) pair of arrays")
    return expect_float_array(value[0], "keys"), expect_float_array(value[1], "values")


def expect_attribute(value: Any) -> object:
    if type(value) not in (int, str):
        raise ProtocolError(f"expected an int or a repr string, got {type(value).__name__}")
    return value


def expect_float_dict(value: Any) -> dict[str, float]:
    if type(value) is not dict:
        raise ProtocolError(f"expected a dict of numbers, got {type(value).__name__}")
    out: dict[str, float] = {}
    for key, number in value.items():
        if type(key) is not str or type(number) not in (int, float):
            raise ProtocolError("expected a dict from str to numbers")
        out[key] = float(number)
    return out


def expect_measurement(value: Any) -> Measurement:
    if type(value) is not Measurement:
        raise ProtocolError(f"expected a Measurement, got {type(value).__name__}")
    return value


def expect_retained(value: Any) -> tuple[int, Measurement]:
    if type(value) is not tuple or len(value) != 2:
        raise ProtocolError("expected a (handle, Measurement) pair")
    return expect_int(value[0]), expect_measurement(value[1])


def expect_info(value: Any) -> SubmissionInfo:
    if type(value) is not SubmissionInfo:
        raise ProtocolError(f"expected a SubmissionInfo, got {type(value).__name__}")
    return value


def expect_model_state(value: Any) -> ModelState:
    if type(value) is not ModelState:
        raise ProtocolError(f"expected a ModelState, got {type(value).__name__}")
    return value


def _plain_json(value: Any, depth: int = 0) -> bool:
    """True for notes a Measurement may carry: scalars, lists and str-keyed dicts of them."""
    if depth > MAX_DEPTH:
        return False
    if value is None or type(value) in (bool, int, float, str):
        return True
    if type(value) in (list, tuple):
        return all(_plain_json(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain_json(v, depth + 1) for k, v in value.items())
    return False


def _fields(name: str, values: dict[str, Any], required: set[str], optional: frozenset[str] = frozenset()) -> None:
    keys = set(values)
    if not required <= keys or not keys <= required | optional:
        raise ProtocolError(f"{name} has fields {sorted(keys)}, expected {sorted(required | optional)}")


def _str_tuple(value: Any, what: str) -> tuple[str, ...]:
    if type(value) is not tuple or not all(type(v) is str for v in value):
        raise ProtocolError(f"{what} must be a tuple of str")
    return value


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if type(value) is not tuple or not all(type(v) is int for v in value):
        raise ProtocolError(f"{what} must be a tuple of int")
    return value


def _check_info(v: dict[str, Any]) -> SubmissionInfo:
    _fields("SubmissionInfo", v, {"module", "tensor", "names"})
    return SubmissionInfo(expect_str(v["module"], "module"), expect_str(v["tensor"], "tensor"), _str_tuple(v["names"], "names"))


def _check_config(v: dict[str, Any]) -> ModelConfig:
    names = {"vocab_size", "embed_dim", "num_layers", "num_heads", "max_seq_len", "seed", "qk_scale"}
    _fields("ModelConfig", v, names)
    return ModelConfig(**{k: expect_int(v[k], k) for k in names})


def _check_state(v: dict[str, Any]) -> ModelState:
    _fields("ModelState", v, {f.name for f in fields(ModelState)})
    enabled = v["cache_enabled"]
    if enabled is not None and type(enabled) not in (bool, int, str):
        raise ProtocolError("cache_enabled must be a bool, int, str or None")
    for flag in ("cache_enabled_present", "kv_cache_is_last_enabled"):
        if type(v[flag]) is not bool:
            raise ProtocolError(f"{flag} must be a bool")
    return ModelState(
        cache_enabled=enabled,
        cache_enabled_present=v["cache_enabled_present"],
        kv_cache_is_last_enabled=v["kv_cache_is_last_enabled"],
        kv_cache=expect_str(v["kv_cache"], "kv_cache"),
        weights_digest=expect_str(v["weights_digest"], "weights_digest"),
        key_rows=_int_tuple(v["key_rows"], "key_rows"),
        value_rows=_int_tuple(v["value_rows"], "value_rows"),
        query_rows=_int_tuple(v["query_rows"], "query_rows"),
    )


def _check_measurement(v: dict[str, Any]) -> Measurement:
    _fields("Measurement", v, {"value", "notes"})
    notes = v["notes"]
    if type(notes) is not dict or not _plain_json(notes):
        raise ProtocolError("Measurement.notes must be a dict of plain values")
    return Measurement(expect_int(v["value"], "a measured value"), notes)


def _check_target(v: dict[str, Any]) -> Target:
    _fields("Target", v, {"path", "module", "tensor"})
    path, tensor = v["path"], v["tensor"]
    if path is not None and type(path) is not str or tensor is not None and type(tensor) is not str:
        raise ProtocolError("Target.path and Target.tensor must be str or None")
    return Target(path, expect_str(v["module"], "module"), tensor)


_CHECKERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "SubmissionInfo": _check_info,
    "ModelConfig": _check_config,
    "ModelState": _check_state,
    "Measurement": _check_measurement,
    "Target": _check_target,
}


def clip(value: Any, limit: int = MAX_TEXT) -> str:
    """A str field of an error description, or "" when the field is not a str."""
    return value[:limit] if type(value) is str else ""

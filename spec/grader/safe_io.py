"""Reading and removing what a submission could have touched, without trusting it.

Every file the grader reads after submission code ran (its own scratch files, the
resume records under --out) goes through `read_bounded`: no symlink is followed
(O_NOFOLLOW), the open never blocks (O_NONBLOCK: a FIFO put in a file's place cannot
hang the grader), only a regular file is read, never more than a size cap, and never
for longer than a timeout. `remove_tree` never raises: a directory a submission floods,
nests thousands deep or makes unremovable costs a note, not the batch.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path


class UnsafeFile(OSError):
    """A file the grader meant to read is missing, not a regular file, too big or too slow."""


def read_bounded(path: Path | str, cap: int, timeout: float = 5.0) -> bytes:
    """The bytes of the regular file `path` (at most `cap` of them), or UnsafeFile."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UnsafeFile(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"{path} is not a regular file")
        if info.st_size > cap:
            raise UnsafeFile(f"{path} holds {info.st_size} bytes, more than the {cap} allowed")
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = os.read(fd, min(1 << 20, cap + 1 - size))
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                break
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
                if size > cap:
                    raise UnsafeFile(f"{path} grew past the {cap} bytes allowed")
            if time.monotonic() > deadline:
                raise UnsafeFile(f"reading {path} took longer than {timeout:g} s")
        return b"".join(chunks)
    finally:
        os.close(fd)


def private_dir(prefix: str) -> Path:
    """A fresh directory only this user can enter (0700), in the system's temp directory."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o700)
    return path


def remove_tree(path: Path | str, timeout: float = 60.0) -> str | None:
    """Remove `path` and everything under it; never raises. None when it is gone, else
    one line saying why it could not be removed. Kill whatever writes into it first."""
    path = str(path)
    try:
        shutil.rmtree(path, ignore_errors=True)
    except Exception:  # RecursionError on a tree nested thousands deep, and the like
        pass
    if not os.path.lexists(path):
        return None
    rm = shutil.which("rm")  # coreutils' rm walks any depth without recursion limits
    if rm is not None:
        try:
            subprocess.run([rm, "-rf", "--", path], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=timeout, check=False)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            pass
    if not os.path.lexists(path):
        return None
    return f"the grader could not remove its scratch directory {path}"

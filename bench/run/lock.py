"""One writer per run folder: ``<run>/.lock``, held with ``flock`` while a run writes.

The kernel drops an ``flock`` when its holder dies, SIGKILL included, so a lock can never
outlive its run: a ``.lock`` file that nobody holds is stale and the next run takes it
over. The file names the holder (PID, host, start time) for the message a second run
prints. Two ``metabench run`` commands with the same results folder and run id therefore
cannot interleave their cells.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from bench.core.errors import MetabenchError

LOCK_NAME = ".lock"


class RunLocked(MetabenchError):
    """Another live process is writing this run."""


def holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock now, in words; None when nobody does (no file, or a
    stale one). Reads only: preflight calls it before anything is written."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"PID {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError):  # written but not yet filled in: a start in progress
        return "another process (starting now)"


class RunLock:
    """``with RunLock(run_dir):`` holds the run's lock, or raises ``RunLocked`` naming the holder.

    ``stale`` says, after entering, whether a dead run's lock file was taken over.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        self.stale = False

    def __enter__(self) -> RunLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLocked(f"run {self.path.parent.name} is being written by {_describe(self.path)}; "
                                f"wait for it to finish (or stop it), then add --resume") from None
            # The previous holder may have unlinked the file between our open and our lock:
            # then we hold a lock on a file nobody else will open. Start again.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        self.stale = os.fstat(fd).st_size > 0
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it: nobody can take a lock we are dropping
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

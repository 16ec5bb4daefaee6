"""Atomic file writes: a run's files are whole or absent, never half-written.

Each write goes to a temporary file in the destination's folder (same filesystem, so the
rename is atomic), is flushed to disk, then renamed over the destination with
``os.replace``. A process killed at any moment (SIGKILL, power loss) leaves either the
old file or the new one, and at worst a ``.part-*`` file that nothing reads; this is what
lets ``metabench run --resume`` trust every file it finds.

Streamed logs (``timing.log``, ``worker.log``) are the one exception: they are appended
while the process runs, so that a hanging or killed cell still leaves its last lines.
Nothing parses them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

PART_PREFIX = ".part-"


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on a clean exit it replaces ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    ``mode`` is ``"w"`` (text; ``newline``/``encoding`` pass through) or ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=PART_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        if mode == "w":
            kwargs.setdefault("encoding", "utf-8")
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; a results file should read like any other file the user writes
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj: Any, **kwargs) -> None:
    """``json.dumps(obj, indent=1, **kwargs)`` written atomically."""
    kwargs.setdefault("indent", 1)
    write_text(path, json.dumps(obj, **kwargs))


def write_csv(path: str | os.PathLike, frame, **kwargs) -> None:
    """A pandas DataFrame's ``to_csv`` written atomically (``index=False`` by default)."""
    kwargs.setdefault("index", False)
    with atomic_open(path, "w", newline="") as f:
        frame.to_csv(f, **kwargs)


def save_figure(path: str | os.PathLike, figure, **kwargs) -> None:
    """A matplotlib figure (or seaborn grid) saved atomically; the format from ``path``'s suffix."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip("."))
    with atomic_open(path, "wb") as f:
        figure.savefig(f, **kwargs)

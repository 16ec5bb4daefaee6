"""Fetching a missing data file from its public source, with an integrity check.

A download goes to a temporary file beside the destination and is renamed into place
only after its digest matches, so an interrupted or corrupted download never leaves a
file that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import DataError

CHUNK = 1 << 16


@dataclass(frozen=True)
class RemoteFile:
    """A file of a dataset: where it lives under the data directory, where to fetch it.

    ``digests`` holds every accepted ``(algorithm, hexdigest)``: a download is kept when
    any of them matches (the official zips have a published md5; the copy shipped in
    some mirrors has other bytes and the same pixels, and is accepted by its sha256).
    """

    relpath: str
    url: str
    digests: tuple[tuple[str, str], ...]
    how_to_get: str = ""


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def matches_any_digest(path: Path, digests) -> bool:
    return any(file_digest(path, algo) == hexdigest for algo, hexdigest in digests)


def _progress(total: int | None, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; this only guards odd installs
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr, leave=False)


def download(remote: RemoteFile, data_dir: Path, *, base_url: str | None = None,
             timeout: float = 60.0) -> Path:
    """Download ``remote`` into ``data_dir / remote.relpath`` and check its digest.

    ``base_url`` replaces the scheme+host+directory part of the URL (tests point it at
    a local HTTP server). Raises ``DataError`` naming the file, the place it was looked
    for and how to provide it, when the download fails or the digest does not match.
    """
    dest = data_dir / remote.relpath
    url = remote.url if base_url is None else base_url.rstrip("/") + "/" + remote.relpath
    where = f"looked for {dest}"
    fix = remote.how_to_get or f"download {remote.url} to {dest}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"missing data file {remote.relpath} ({where}); cannot create "
                        f"{dest.parent} ({e.strerror}); {fix}, or pass --data-dir") from None
    fd, tmp_name = tempfile.mkstemp(prefix=".part-", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            bar = _progress(int(length) if length else None, remote.relpath)
            for block in iter(lambda: resp.read(CHUNK), b""):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
        if not matches_any_digest(tmp, remote.digests):
            raise DataError(f"downloaded {remote.relpath} from {url} but its checksum does "
                            f"not match the published one; {fix}")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise DataError(f"missing data file {remote.relpath} ({where}); download from {url} "
                        f"failed ({reason}); {fix}, then point --data-dir or "
                        f"METABENCH_DATA_DIR at its parent folder") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest

"""The Omniglot reader: official zips (real and synthetic), the decode cache, missing data
and the download path (against a local HTTP server)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.core.data import omniglot
from bench.core.data.download import RemoteFile, download
from bench.core.errors import DataError


def test_real_zips_hold_every_character_with_20_drawings(data_dir, cache_dir):
    images = omniglot.load_images(data_dir, cache_dir, 28, allow_download=False)
    assert images.images.shape == (1623, 20, 28, 28) and images.images.dtype == np.uint8
    assert len(set(images.characters)) == 1623
    assert "Braille/character01" in images.index and "ULOG/character26" in images.index
    # ink is bright after inversion; most pixels are background
    assert images.images.mean() < 60 and images.images.max() == 255


def test_vinyals_split_sizes(data_dir):
    for split, n in omniglot.SPLIT_CLASS_COUNTS.items():
        classes = omniglot.read_split(data_dir, split, allow_download=False)
        assert len(classes) == n
        assert {q for _, q in classes} == {0, 1, 2, 3}
    train = {c for c, _ in omniglot.read_split(data_dir, "trainval", allow_download=False)}
    test = {c for c, _ in omniglot.read_split(data_dir, "test", allow_download=False)}
    assert len(train) == 1200 and len(test) == 423 and not train & test


def test_identical_drawings_in_the_release_stay_identical(data_dir, cache_dir):
    # The release has one duplicated pair: Braille character01, drawers 03 and 19.
    images = omniglot.load_images(data_dir, cache_dir, 28, allow_download=False)
    braille = images.images[images.index["Braille/character01"]]
    assert np.array_equal(braille[2], braille[18])
    assert not np.array_equal(braille[2], braille[3])


def _png(draw_square_at: int, size: int = 105) -> bytes:
    a = np.full((size, size), 255, np.uint8)  # background white, as in the release
    a[draw_square_at:draw_square_at + 30, 40:70] = 0
    buf = io.BytesIO()
    Image.fromarray(a).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def make_official_zip(path: Path, split: str, alphabets: dict[str, int], first_id: int = 1) -> None:
    """A tiny zip in the official layout: images_<split>/<Alphabet>/characterNN/IIII_DD.png."""
    char_id = first_id
    with zipfile.ZipFile(path, "w") as z:
        for alphabet, n_chars in alphabets.items():
            for c in range(1, n_chars + 1):
                for drawer in range(1, 21):
                    z.writestr(f"images_{split}/{alphabet}/character{c:02d}/{char_id:04d}_{drawer:02d}.png",
                               _png(drawer))
                char_id += 1


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "omniglot" / "splits" / "vinyals").mkdir(parents=True)
    make_official_zip(root / "omniglot" / "images_background.zip", "background", {"Aaa": 2, "Bbb": 1})
    make_official_zip(root / "omniglot" / "images_evaluation.zip", "evaluation", {"Ccc": 1}, first_id=4)
    return root


def test_synthetic_official_zip_is_decoded_in_drawer_order(tiny_data, tmp_path):
    decoded = omniglot.read_zip(tiny_data / "omniglot" / "images_background.zip", 28)
    assert sorted(decoded) == ["Aaa/character01", "Aaa/character02", "Bbb/character01"]
    a = decoded["Aaa/character01"]
    assert a.shape == (20, 28, 28)
    # the square moves down one row per drawer: its centre of mass grows with the drawer number
    rows = [(img.astype(float).sum(1) * np.arange(28)).sum() / img.sum() for img in a]
    assert all(r1 < r2 for r1, r2 in zip(rows, rows[1:]))
    # inverted: ink (the square) bright, background dark
    assert a[0, 0, 0] == 0 and a[0].max() > 200


def test_zip_with_missing_drawings_is_reported_as_damaged(tmp_path):
    path = tmp_path / "images_background.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images_background/Aaa/character01/0001_01.png", _png(1))
    with pytest.raises(DataError, match="has 1 images, expected 20"):
        omniglot.read_zip(path, 28)


def test_corrupt_zip_is_reported_with_the_fix(tmp_path):
    path = tmp_path / "images_background.zip"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="damaged data file .* delete it"):
        omniglot.read_zip(path, 28)


def test_cache_is_written_reused_and_invalidated(tiny_data, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    omniglot._load_images_cached.cache_clear()
    calls = []
    real = omniglot.read_zip
    monkeypatch.setattr(omniglot, "read_zip", lambda p, s: calls.append((Path(p).name, s)) or real(p, s))
    first = omniglot.load_images(tiny_data, cache, 28, allow_download=False)
    assert len(calls) == 2 and len(list(cache.rglob("images.npy"))) == 1
    omniglot._load_images_cached.cache_clear()
    again = omniglot.load_images(tiny_data, cache, 28, allow_download=False)
    assert len(calls) == 2, "a warm cache must not decode again"
    assert np.array_equal(first.images, again.images) and first.identity == again.identity
    # another size: another cache entry
    omniglot._load_images_cached.cache_clear()
    omniglot.load_images(tiny_data, cache, 20, allow_download=False)
    assert len(calls) == 4 and len(list(cache.rglob("images.npy"))) == 2
    # a changed zip: decoded again, new identity
    make_official_zip(tiny_data / "omniglot" / "images_background.zip", "background", {"Aaa": 3})
    omniglot._load_images_cached.cache_clear()
    changed = omniglot.load_images(tiny_data, cache, 28, allow_download=False)
    assert len(calls) == 6 and changed.identity != first.identity and len(changed.characters) == 4


def test_read_only_data_dir_is_never_written(tiny_data, tmp_path):
    before = sorted(p.relative_to(tiny_data) for p in tiny_data.rglob("*"))
    omniglot._load_images_cached.cache_clear()
    omniglot.load_images(tiny_data, tmp_path / "cache", 28, allow_download=False)
    assert sorted(p.relative_to(tiny_data) for p in tiny_data.rglob("*")) == before


def test_missing_file_error_names_the_file_where_and_how(tmp_path):
    with pytest.raises(DataError) as info:
        omniglot.load_images(tmp_path / "nowhere", tmp_path / "cache", 28, allow_download=False)
    msg = str(info.value)
    assert "images_background.zip" in msg and str(tmp_path / "nowhere") in msg
    assert "brendenlake/omniglot" in msg and "--data-dir" in msg and "\n" not in msg


def test_missing_split_error_names_the_protonet_repository(tmp_path):
    with pytest.raises(DataError, match="jakesnell/prototypical-networks"):
        omniglot.read_split(tmp_path, "test", allow_download=False)


def test_cli_reports_missing_data_in_one_line(tmp_path, data_env):
    import subprocess
    import sys

    env = {**data_env, "METABENCH_DATA_DIR": str(tmp_path / "empty"), "METABENCH_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "bench.cli", "episodes", "omniglot-5w1s", "--count", "2"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "missing data file omniglot/images_background.zip" in r.stderr


# -- the download path, against a local HTTP server --------------------------------------

@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_checks_the_digest_and_places_the_file(http_root, tmp_path):
    root, url = http_root
    (root / "omniglot" / "splits" / "vinyals").mkdir(parents=True)
    body = b"Angelic/character01/rot000\n"
    (root / "omniglot" / "splits" / "vinyals" / "test.txt").write_bytes(body)
    remote = RemoteFile("omniglot/splits/vinyals/test.txt", "http://unused/test.txt",
                        (("sha256", hashlib.sha256(body).hexdigest()),))
    dest = download(remote, tmp_path / "data", base_url=url)
    assert dest.read_bytes() == body
    assert not list((tmp_path / "data").rglob(".part-*")), "no partial file left behind"


def test_download_with_wrong_digest_keeps_nothing(http_root, tmp_path):
    root, url = http_root
    (root / "omniglot").mkdir()
    (root / "omniglot" / "images_background.zip").write_bytes(b"tampered")
    with pytest.raises(DataError, match="checksum does not match"):
        download(omniglot.zip_remote("images_background"), tmp_path / "data", base_url=url)
    assert not list((tmp_path / "data").rglob("*.zip")) and not list((tmp_path / "data").rglob(".part-*"))


def test_official_files_are_fetched_when_missing(http_root, tmp_path, data_dir, monkeypatch):
    """ensure_file on a missing official zip downloads it from the (local) source and
    accepts it by its published digest."""
    monkeypatch.delenv("METABENCH_OFFLINE", raising=False)  # CI sets it; this server is local
    root, url = http_root
    (root / "omniglot").mkdir()
    src = data_dir / "omniglot" / "images_evaluation.zip"
    (root / "omniglot" / "images_evaluation.zip").write_bytes(src.read_bytes())
    path = omniglot.ensure_file(omniglot.zip_remote("images_evaluation"), tmp_path / "data", base_url=url)
    assert path.stat().st_size == src.stat().st_size


def test_unreachable_source_error_says_what_to_do(tmp_path):
    with pytest.raises(DataError) as info:
        download(omniglot.split_remote("val"), tmp_path / "data", base_url="http://127.0.0.1:9", timeout=5)
    msg = str(info.value)
    assert "missing data file omniglot/splits/vinyals/val.txt" in msg and "failed" in msg
    assert "METABENCH_DATA_DIR" in msg and "\n" not in msg

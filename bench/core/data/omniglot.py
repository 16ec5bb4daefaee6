"""Omniglot from the official zips, split by the Vinyals split files.

Layout under the data directory (as published, and as in ``shared/data``)::

    omniglot/images_background.zip   images_background/<Alphabet>/characterNN/XXXX_YY.png
    omniglot/images_evaluation.zip   images_evaluation/<Alphabet>/characterNN/XXXX_YY.png
    omniglot/splits/vinyals/{train,val,trainval,test}.txt   one <Alphabet>/characterNN/rotDDD a line

Decoding: each 105x105 1-bit PNG is converted to 8-bit grey and resized to the spec's
``image_size`` with Lanczos resampling, the filter of the MAML reference preprocessing
(cbfinn/maml ``resize_images.py``): it is antialiased, so thin strokes survive the 105 -> 28
reduction instead of aliasing away as with nearest or plain bilinear. Pixels are then
inverted so that the stroke is 1.0 and the background 0.0 (as in the ProtoNet reference),
which keeps zero padding in the convolutions equal to "no ink".

Decoded arrays are cached as ``.npy`` in the cache directory, keyed by the zips' sha256,
the image size, the resampling filter and the cache format version, so that a changed
zip or a changed resize invalidates them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from bench.core.atomic import atomic_open, write_text
from bench.core.data.download import RemoteFile, download, file_digest
from bench.core.errors import DataError

CACHE_FORMAT = 1
RESAMPLING = "lanczos"
DRAWERS = 20  # images per character in the official release
ZIP_NAMES = ("images_background", "images_evaluation")
SPLITS = ("train", "val", "trainval", "test")
# Classes per split file (characters x 4 rotations): used to validate specs without data.
SPLIT_CLASS_COUNTS = {"train": 4112, "val": 688, "trainval": 4800, "test": 1692}

_ZIP_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip"
_SPLIT_URL = ("https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/"
              "data/omniglot/splits/vinyals/{name}.txt")
# Official zips: md5 as published with torchvision's Omniglot; sha256 of the repacked,
# pixel-identical copy some mirrors (and this project's CI) carry.
_ZIP_DIGESTS = {
    "images_background": (("md5", "68d2efa1b9178cc56df9314c21c6e718"),
                          ("sha256", "224efff6ee4a4eb82696f418da1398ab3ffb738c4d01e4dd03a447ba450f67a4")),
    "images_evaluation": (("md5", "6b91aef0f799c5bb55b94e3f2daec811"),
                          ("sha256", "467622f9e4fbe52c90a1dadee9dfa0b4da42ae2b8bac6403265ada607b3a5d69")),
}
_SPLIT_DIGESTS = {
    "train": "984522c194c30fb678ce53304a160a42faf5403ad4f9a67010f32dd3a35738e0",
    "val": "11f99e54faee3e26f53d3231c1cceac5bf7b8730e9be31cb6dab256551dc0c1a",
    "trainval": "5276ae50c755596d0bff7f2284e85625695549a85ee6e36b6491ad1e5d1cc26a",
    "test": "845264cc5c156180828ccf17915668b17ee21424d0170df6e7d81676aa5d1204",
}


def zip_remote(name: str) -> RemoteFile:
    return RemoteFile(
        relpath=f"omniglot/{name}.zip",
        url=_ZIP_URL.format(name=name),
        digests=_ZIP_DIGESTS[name],
        how_to_get=f"copy {name}.zip from github.com/brendenlake/omniglot (python/) into "
                   f"<data-dir>/omniglot/",
    )


def split_remote(split: str) -> RemoteFile:
    return RemoteFile(
        relpath=f"omniglot/splits/vinyals/{split}.txt",
        url=_SPLIT_URL.format(name=split),
        digests=(("sha256", _SPLIT_DIGESTS[split]),),
        how_to_get=f"copy data/omniglot/splits/vinyals/{split}.txt from "
                   f"github.com/jakesnell/prototypical-networks into <data-dir>/omniglot/splits/vinyals/",
    )


def ensure_file(remote: RemoteFile, data_dir: Path, *, allow_download: bool = True,
                base_url: str | None = None) -> Path:
    """Return the local path of ``remote``, downloading it when it is missing."""
    path = data_dir / remote.relpath
    if path.is_file():
        return path
    if not allow_download or os.environ.get("METABENCH_OFFLINE"):
        raise DataError(f"missing data file {remote.relpath} (looked for {path}); "
                        f"{remote.how_to_get}, or pass --data-dir / METABENCH_DATA_DIR")
    return download(remote, data_dir, base_url=base_url)


_PNG_NAME = re.compile(r"^(images_background|images_evaluation)/([^/]+)/(character\d+)/(\d{4})_(\d{2})\.png$")


def read_zip(path: Path, image_size: int) -> dict[str, np.ndarray]:
    """Decode one official zip: ``{"Alphabet/characterNN": uint8 [20, S, S]}``, ink = 255.

    Drawers are ordered by their file suffix ``_01`` .. ``_20``.
    """
    from PIL import Image  # pillow is a harness dependency; imported here to keep startup light

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"damaged data file {path} ({e}); delete it and run again to "
                        f"re-download, or replace it with the official zip") from None
    chars: dict[str, list[tuple[int, np.ndarray]]] = {}
    with archive:
        for info in archive.infolist():
            m = _PNG_NAME.match(info.filename)
            if not m:
                continue
            key = f"{m.group(2)}/{m.group(3)}"
            with Image.open(io.BytesIO(archive.read(info))) as im:
                im = im.convert("L").resize((image_size, image_size), Image.Resampling.LANCZOS)
                pixels = 255 - np.asarray(im, dtype=np.uint8)
            chars.setdefault(key, []).append((int(m.group(5)), pixels))
    if not chars:
        raise DataError(f"damaged data file {path}: no images_*/Alphabet/characterNN/*.png "
                        f"entries; replace it with the official zip")
    out = {}
    for key, items in chars.items():
        items.sort(key=lambda t: t[0])
        if len(items) != DRAWERS:
            raise DataError(f"damaged data file {path}: {key} has {len(items)} images, "
                            f"expected {DRAWERS}; replace it with the official zip")
        out[key] = np.stack([p for _, p in items])
    return out


@dataclass(frozen=True)
class OmniglotImages:
    """Every character of both zips, decoded and resized.

    ``images``: uint8 [n_characters, 20, S, S], ink = 255. ``characters``: their
    ``Alphabet/characterNN`` keys, sorted. ``identity``: a digest of the zips and the
    decoding, part of every episode fingerprint.
    """

    images: np.ndarray
    characters: tuple[str, ...]
    identity: str

    @property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.characters)}


def _atomic_save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def load_images(data_dir: Path, cache_dir: Path, image_size: int, *,
                allow_download: bool = True, base_url: str | None = None) -> OmniglotImages:
    """Decoded Omniglot at ``image_size``, from the cache when the zips are unchanged."""
    zips = [ensure_file(zip_remote(n), data_dir, allow_download=allow_download, base_url=base_url)
            for n in ZIP_NAMES]
    return _load_images_cached(tuple(str(z) for z in zips), tuple(file_digest(z, "sha256") for z in zips),
                               str(cache_dir), image_size)


@lru_cache(maxsize=4)
def _load_images_cached(zips: tuple[str, ...], shas: tuple[str, ...], cache_dir: str,
                        image_size: int) -> OmniglotImages:
    key_src = json.dumps({"zips": shas, "size": image_size, "resampling": RESAMPLING,
                          "format": CACHE_FORMAT}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    base = Path(cache_dir) / "omniglot" / key
    img_path, names_path = base / "images.npy", base / "characters.json"
    if img_path.is_file() and names_path.is_file():
        images = np.load(img_path)
        characters = tuple(json.loads(names_path.read_text()))
    else:
        decoded: dict[str, np.ndarray] = {}
        for z in zips:
            decoded.update(read_zip(Path(z), image_size))
        characters = tuple(sorted(decoded))
        images = np.stack([decoded[c] for c in characters])
        try:
            # both atomic: processes sharing a cache (pytest-xdist's workers, a cluster's
            # jobs) decode at once, and a reader never sees half a file
            _atomic_save(img_path, images)
            write_text(names_path, json.dumps(list(characters)))
        except OSError:
            pass  # an unwritable cache costs a re-decode next time, never a failure
    return OmniglotImages(images=images, characters=characters, identity=f"omniglot:{key}")


def read_split(data_dir: Path, split: str, *, allow_download: bool = True,
               base_url: str | None = None) -> list[tuple[str, int]]:
    """The classes of a Vinyals split: ``(Alphabet/characterNN, quarter_turns)`` per line."""
    path = ensure_file(split_remote(split), data_dir, allow_download=allow_download, base_url=base_url)
    classes = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        alphabet, character, rot = line.split("/")
        if not rot.startswith("rot") or int(rot[3:]) % 90:
            raise DataError(f"damaged split file {path}, line {n}: {line!r} does not end "
                            f"in rot000/rot090/rot180/rot270; replace it with the published file")
        classes.append((f"{alphabet}/{character}", int(rot[3:]) // 90))
    return classes


def split_class_images(images: OmniglotImages, classes: list[tuple[str, int]]) -> np.ndarray:
    """uint8 [n_classes, 20, S, S]: each class's drawings, rotated counter-clockwise.

    Rotation by ``np.rot90`` matches PIL's ``Image.rotate`` (counter-clockwise) used by
    the ProtoNet reference to build the rotated classes.
    """
    index = images.index
    missing = [c for c, _ in classes if c not in index]
    if missing:
        raise DataError(f"split lists character {missing[0]} that is not in the zips; "
                        f"the split files and zips do not belong together")
    out = np.empty((len(classes),) + images.images.shape[1:], dtype=np.uint8)
    for i, (char, quarter_turns) in enumerate(classes):
        out[i] = np.rot90(images.images[index[char]], k=quarter_turns, axes=(1, 2))
    return out

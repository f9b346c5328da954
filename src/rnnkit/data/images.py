"""Fashion-MNIST images and captioned scenes composed from them.

Data: Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 28x28 grayscale pictures of clothes in 10
classes, 60,000 for training and 10,000 for testing, in the IDX format of MNIST. The Debian package
``dataset-fashion-mnist`` installs them (gzip'd) in `DEFAULT_DIR`; any folder holding the four
files (gzip'd or not) works too.

Scenes: `compose_scene` puts 1 to 4 items side by side on a black strip ``28 high x 28 * slots
wide`` (default 4 slots: 28 x 112). The scene has ``slots`` cells of 28 x 28; ``n`` of them, chosen
at random, hold one picture each, the others stay black. The caption names the items left to
right (`caption_of`):

    1 item   "a sneaker"
    2 items  "a sneaker to the left of a bag"
    3 items  "a sneaker to the left of a bag and a shirt"
    4 items  "a sneaker to the left of a bag and a shirt and an ankle boot"

("an" before a vowel). So a caption is a function of the labels in order, and the words are a
fixed, small vocabulary (`caption_vocabulary`) with the ids of `rnnkit.data.subword`: 0 pad,
1 unknown, 2 begin, 3 end, then the words.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rnnkit.data.bounded import message_of, read_capped
from rnnkit.data.tokens import BOS, EOS, PAD, UNK  # noqa: F401 (re-exported)
from rnnkit.errors import RnnkitError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist`, or give --data DIR"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle boot")  # fmt: skip
SPLITS = {"train": "train", "test": "t10k"}
MAX_IDX_BYTES = 256 << 20
"""Bytes of one IDX file after decompression (256 MiB): Fashion-MNIST's largest is 47 MB."""
SIDE = 28  # pixels of one Fashion-MNIST picture (square)

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (MNIST's format; gzip'd or not) as a numpy array of its shape and type."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
    except OSError as err:
        raise RnnkitError(f"cannot read {path}: {message_of(err)}") from None
    raw = read_capped(path, MAX_IDX_BYTES, "give Fashion-MNIST's own files",
                      compression=".gz" if gzipped else "plain")  # fmt: skip
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
        raise RnnkitError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise RnnkitError(f"{path} is cut short inside its header (a truncated download?)")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4")) if ndim else ()
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    if len(raw) - header != dtype.itemsize * math.prod(shape):
        raise RnnkitError(f"{path}: {len(raw) - header} data bytes do not fit the shape {shape} "
                          "of its header (a truncated download?)")  # fmt: skip
    out = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    out.flags.writeable = False  # shared by the cache of `_load`
    return out


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise RnnkitError(f"Fashion-MNIST file {stem}[.gz] not found in {folder}; {INSTALL_HINT}")


@functools.lru_cache(maxsize=4)
def _load(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    root = Path(folder)
    if not root.is_dir():
        raise RnnkitError(f"no Fashion-MNIST folder {root}; {INSTALL_HINT}")
    prefix = SPLITS[split]
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE) or images.dtype != np.uint8:
        raise RnnkitError(f"{root}: {prefix} images are {images.dtype} {images.shape}, not "
                          f"uint8 (N, {SIDE}, {SIDE})")  # fmt: skip
    if labels.shape != (len(images),) or labels.size and labels.max() >= len(CLASSES):
        raise RnnkitError(f"{root}: {prefix} labels do not match its {len(images)} images")
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_fashion_mnist(split: str, folder: str | Path | None = None):
    """``(images (N, 28, 28) uint8, labels (N,) uint8)`` of ``split`` ("train" or "test") from
    ``folder`` (default `DEFAULT_DIR`); read once per process, read-only."""
    if split not in SPLITS:
        raise RnnkitError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return _load(str(Path(folder or DEFAULT_DIR).expanduser().resolve()), split)


def article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def caption_of(labels: Sequence[int]) -> str:
    """The caption of a scene holding the classes ``labels``, left to right (module docstring)."""
    if not labels:
        raise RnnkitError("a scene holds at least one item")
    names = [f"{article(CLASSES[k])} {CLASSES[k]}" for k in labels]
    if len(names) == 1:
        return names[0]
    return f"{names[0]} to the left of " + " and ".join(names[1:])


def parse_caption(text: str) -> list[int] | None:
    """The labels a caption names, left to right; None if it does not follow the grammar."""
    words = text.split()
    lookup = {tuple(name.split()): k for k, name in enumerate(CLASSES)}
    labels, i, joins = [], 0, ["to", "the", "left", "of"]
    while True:
        if i >= len(words) or words[i] not in ("a", "an"):
            return None
        for name, k in lookup.items():
            if tuple(words[i + 1 : i + 1 + len(name)]) == name:
                labels.append(k)
                i += 1 + len(name)
                break
        else:
            return None
        if i == len(words):
            return labels
        join = joins if len(labels) == 1 else ["and"]
        if words[i : i + len(join)] != join:
            return None
        i += len(join)


def caption_vocabulary() -> list[str]:
    """The words of every caption after the 4 special tokens; the index is the token id."""
    words = {"a", "an", "to", "the", "left", "of", "and"}
    for name in CLASSES:
        words.update(name.split())
    return [*SPECIALS, *sorted(words)]


def compose_scene(
    images: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    min_items: int = 1,
    max_items: int = 4,
    slots: int = 4,
) -> tuple[np.ndarray, list[int]]:
    """One scene: ``(pixels (28, 28 * slots) uint8, labels of its items left to right)``.

    Draws from ``rng`` the number of items n (uniform in [min_items, max_items]), the n cells of
    the strip that hold them (without replacement) and n pictures (with replacement) of
    ``images``/``labels``. The same ``rng`` state gives the same scene.
    """
    check_scene_settings(min_items, max_items, slots)
    count = int(rng.integers(min_items, max_items + 1))
    cells = np.sort(rng.choice(slots, size=count, replace=False))
    picks = rng.integers(0, len(images), size=count)
    canvas = np.zeros((SIDE, SIDE * slots), dtype=np.uint8)
    for cell, pick in zip(cells.tolist(), picks.tolist()):
        canvas[:, cell * SIDE : (cell + 1) * SIDE] = images[pick]
    return canvas, [int(labels[p]) for p in picks]


def compose_scenes(
    images: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator,
    min_items: int = 1, max_items: int = 4, slots: int = 4,
) -> tuple[np.ndarray, list[list[int]]]:  # fmt: skip
    """``count`` scenes drawn one after the other: pixels (count, 28, 28 * slots) uint8 and
    their labels."""
    scenes = [compose_scene(images, labels, rng, min_items, max_items, slots) for _ in range(count)]
    return np.stack([s for s, _ in scenes]), [k for _, k in scenes]


def check_scene_settings(min_items: int, max_items: int, slots: int) -> None:
    if not 1 <= min_items <= max_items <= slots:
        raise RnnkitError(f"scene items must satisfy 1 <= min_items ({min_items}) <= max_items "
                          f"({max_items}) <= slots ({slots})")  # fmt: skip


# --- image files ------------------------------------------------------------------------------


def read_image(path: str | Path) -> np.ndarray:
    """A picture file (PNG, JPEG, ...) as grayscale pixels (H, W) uint8 (Pillow, which
    matplotlib requires)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise RnnkitError(f"no image file {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise RnnkitError(f"cannot read the image {path}: {err}") from None


def write_image(path: str | Path, pixels: np.ndarray) -> Path:
    """Write grayscale pixels (H, W) uint8 as an 8-bit grayscale PNG (read back exactly)."""
    from PIL import Image

    from rnnkit.io import atomic_write_bytes

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, "PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path

"""Parallel image decoding into a uint8 (N, 3, S, S) memory map.

Images are decoded with Pillow in a thread pool (Pillow releases the GIL while decoding and
resizing, so threads scale), each worker writing its rows straight into a ``.npy`` memory map opened
with :func:`numpy.lib.format.open_memmap`; nothing holds the whole image set in RAM. The result is
handed to :func:`pipeline.data.formats.write_prepared` as ``ModalityData("pixels", memmap)``, which
streams it into the prepared folder.

Resizing (``resize`` parameter of the dataset modules):

* ``shorter_center_crop`` (default): scale so that the shorter side is ``S`` (bilinear, antialiased),
  then crop the central ``S x S`` square, the usual evaluation transform of deep hashing code;
* ``stretch``: resize to ``S x S`` ignoring the aspect ratio (what some MATLAB pipelines do).

Disk: the pixels take N x 3 x S x S bytes (NUS-WIDE at S = 224: 29.5 GB; COCO: 18.4 GB; MIRFlickr:
3.0 GB), twice that while ``write_prepared`` copies the scratch map into the prepared folder.

JPEGs are decoded with ``Image.draft`` (DCT-domain downscaling to the smallest power-of-two scale that
still covers ``S x S``) before the resize: several times faster on large photos, and as deterministic
as the full decode. Grey, palette and CMYK images are converted to RGB. Same files, same Pillow ->
byte-identical arrays, whatever the number of workers.
"""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
from pydantic import Field

from pipeline.data.registry import DatasetParams
from pipeline.data.staging import remove_stale, staging_path
from pipeline.core.errors import DataError

log = logging.getLogger(__name__)

RESIZE_MODES = ("shorter_center_crop", "stretch")
WORKERS_ENV = "HASHBENCH_DECODE_WORKERS"


def default_workers() -> int:
    env = os.environ.get(WORKERS_ENV)
    if env:
        return max(1, int(env))
    return max(1, min(16, os.cpu_count() or 1))


def to_rgb_square(img, size: int, mode: str = "shorter_center_crop") -> np.ndarray:
    """A PIL image as a (3, size, size) uint8 array, resized by ``mode``."""
    from PIL import Image

    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    if mode == "stretch":
        if (w, h) != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
    elif mode == "shorter_center_crop":
        if min(w, h) != size:
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            w, h = nw, nh
        if (w, h) != (size, size):
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
    else:
        raise DataError(f"unknown resize mode {mode!r}; choose one of {RESIZE_MODES}")
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_image(source: Any, size: int, mode: str = "shorter_center_crop") -> np.ndarray:
    """Decode one image source into (3, size, size) uint8.

    ``source``: a path, raw bytes, an (H, W, 3) uint8 array, or a zero-argument callable returning one
    of those (for example a reader of an archive member).
    """
    from PIL import Image

    if callable(source):
        source = source()
    if isinstance(source, np.ndarray):
        img = Image.fromarray(source)
    else:
        fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        img = Image.open(fp)
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        img.load()
    return to_rgb_square(img, size, mode)


def decode_to_memmap(
    sources: Sequence[Any],
    path: Path,
    size: int,
    *,
    mode: str = "shorter_center_crop",
    workers: int | None = None,
    desc: str = "images",
    names: Callable[[int], str] | None = None,
    block: int = 64,
) -> np.ndarray:
    """Decode ``sources`` into a new ``.npy`` memory map at ``path`` (N, 3, size, size) and return it
    read-only. Errors name the file that failed (``names(i)`` or the source itself)."""
    from tqdm import tqdm

    if mode not in RESIZE_MODES:
        raise DataError(f"unknown resize mode {mode!r}; choose one of {RESIZE_MODES}")
    n = len(sources)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    workers = workers or default_workers()

    def run(start: int) -> int:
        stop = min(n, start + block)
        for i in range(start, stop):
            try:
                out[i] = load_image(sources[i], size, mode)
            except DataError:
                raise
            except Exception as exc:  # PIL raises many kinds; name the file and what to do
                what = names(i) if names else (str(sources[i]) if not callable(sources[i]) else f"item {i}")
                raise DataError(f"{what}: cannot decode image ({type(exc).__name__}: {exc}); the raw file is corrupt: fetch the dataset again") from None
        return stop - start

    starts = list(range(0, n, block))
    with tqdm(total=n, desc=desc, unit="img", leave=False) as bar:
        if workers == 1:
            for s in starts:
                bar.update(run(s))
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                pending = set()
                it = iter(starts)
                for s in it:  # keep a bounded number of blocks in flight
                    pending.add(pool.submit(run, s))
                    if len(pending) >= 4 * workers:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in done:
                            bar.update(f.result())
                for f in pending:
                    bar.update(f.result())
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def scratch_pixels_path(out_dir: Path, modality: str = "image") -> Path:
    """A scratch ``.npy`` beside ``out_dir`` for the pixel memory map (deleted after writing); scratch
    files and staging folders that a killed prepare left beside ``out_dir`` are removed first."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir, mine=(f"{modality}-pixels",))
    return staging_path(out_dir, f"{modality}-pixels", ".npy")


# -- shared parameters and the prepare-side helper ----------------------------------------------------


class ImageDatasetParams(DatasetParams):
    """Parameters shared by the image datasets: where to fetch from and how to store pixels."""

    mirror: str | None = Field(None, description="base URL replacing the official host: files are fetched from <mirror>/<file name>")
    image_size: int = Field(224, ge=8, le=1024, description="stored pixels are (3, S, S) uint8")
    resize: Literal["shorter_center_crop", "stretch"] = "shorter_center_crop"


@contextmanager
def pixel_memmap(sources: Sequence[Any], out_dir: Path, params: ImageDatasetParams, *, desc: str,
                 names: Callable[[int], str] | None = None) -> Iterator[np.ndarray]:
    """Decode ``sources`` into a scratch memory map beside ``out_dir``; yield it; delete it afterwards."""
    path = scratch_pixels_path(out_dir)
    try:
        yield decode_to_memmap(sources, path, params.image_size, mode=params.resize, desc=desc, names=names)
    finally:
        path.unlink(missing_ok=True)

"""Frozen-backbone features: a pretrained network run once over a prepared image dataset, cached.

``hashbench features cifar10 --backbone efficientnet_lite0`` (DVC stage
``features@cifar10+efficientnet_lite0``) reads ``data/prepared/cifar10`` and writes
``data/prepared/cifar10+efficientnet_lite0``: a complete prepared dataset (the format of
:mod:`pipeline.data.formats`) whose ``image`` modality is ``features`` (float16 ``(N, D)``, one row per
item in the order of the source's arrays), with the source's labels, splits and other modalities
copied (hard links where possible). Suites train on it by naming ``dataset: cifar10+efficientnet_lite0``
(the dataset, ``+``, the backbone): everything downstream (splits, protocols, loaders, methods that
accept ``features``) works unchanged, and the table headers carry the backbone in the dataset name.

The manifest's ``features`` block records the backbone, the weights entry and its sha256, the input
size and preprocessing, the counts, the source manifest's sha256, the sha256 of the array (also in
``checksums``, like every prepared array), the device and the throughput.

Preprocessing: the stored uint8 pixels (N, 3, S, S) are scaled to [0, 1] and resized to the weights'
``input_size`` (bilinear; CIFAR-10's 32 px are upsampled, as in the usual transfer protocol), then the
backbone's own normalisation is applied inside the trunk (ImageNet mean/std for torchvision models,
``(x*255-127)/128`` for EfficientNet-Lite0, the mean colour for CNN-F); the network runs in eval mode
under ``torch.inference_mode`` and the pooled output (before the classifier) is the feature.

Resumable, never half-trusted: rows are written into ``.<name>.partial/image.npy`` (an ``open_memmap``)
in batches, and after every flushed block ``progress.json`` records how many rows are final and the
hash of the configuration. An interrupted run continues from there when the configuration (source
data, weights sha256, input size, backbone) is unchanged, and starts afresh otherwise. Only a finished
array gets its manifest and is renamed into place, so ``data/prepared/<name>`` never holds a
half-written array; an existing output is verified (array sha256) before it is reused, and a mismatch
is reported and extracted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import DataError
from pipeline.data.formats import MANIFEST, SCHEMA_VERSION, PreparedDataset, sha256_file

log = logging.getLogger(__name__)

SEP = "+"
PROGRESS = "progress.json"
FEATURES_VERSION = 1


def feature_dataset_name(dataset: str, backbone: str) -> str:
    return f"{dataset}{SEP}{backbone}"


def split_dataset_name(name: str) -> tuple[str, str | None]:
    """``"cifar10+efficientnet_lite0"`` -> ``("cifar10", "efficientnet_lite0")``; a plain name -> ``(name, None)``."""
    base, sep, backbone = name.partition(SEP)
    return base, (backbone or None) if sep else None


def _json_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def resolve_device(name: str | None):
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"device {name!r} asked for, but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def build_extractor(architecture: str, weights_path: str | None, in_channels: int = 3, input_size: int = 224):
    """The frozen trunk (eval mode, no gradients) of ``architecture`` with the given local weights file.

    ``small_cnn`` (the shared small CNN, default channels) is accepted for tests and private weights."""
    from methods.nets.encoders import SmallCNN, pixel_trunk
    from methods.nets.weights import load_state_dict_into, read_state_dict

    if architecture == "small_cnn":
        trunk = SmallCNN(in_channels, input_size, input_size)
        if weights_path:
            load_state_dict_into(trunk, read_state_dict(weights_path, "small_cnn"), weights_path, "small_cnn")
        dim = trunk.out_dim
    else:
        trunk, dim = pixel_trunk(architecture, in_channels, weights_path)
    trunk.eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    return trunk, dim


def extract_features(
    src_dir: Path,
    out_dir: Path,
    backbone: str,
    weights: str | None = None,
    *,
    root: str | Path | None = None,
    modality: str = "image",
    batch_size: int = 64,
    input_size: int | None = None,
    device: str | None = "auto",
    flush_every: int = 1024,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the frozen ``backbone`` (weights entry ``weights``, default: the backbone's ImageNet entry) over the
    ``modality`` pixels of the prepared dataset ``src_dir`` into the feature dataset ``out_dir``; return its
    ``features`` manifest block (``status``: ``extracted``, ``resumed`` or ``up-to-date``). ``root``: the project
    root whose ``data/weights`` holds the fetched weights (``$HASHBENCH_WEIGHTS_DIR`` overrides)."""
    import torch
    import torch.nn.functional as F_
    from tqdm import tqdm

    from pipeline.data.weights import DEFAULT_WEIGHTS, get_weights, resolve_weights

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    src = PreparedDataset(src_dir)
    spec = src.modality_spec(modality)
    if spec.kind != "pixels":
        raise DataError(f"{src_dir}: modality {modality!r} is {spec.kind!r}; features are extracted from pixels")
    wname = weights or DEFAULT_WEIGHTS.get(backbone)
    if wname is None:
        raise DataError(f"backbone {backbone!r} has no default weights entry; name one with --weights (see `hashbench list-weights`)")
    entry = get_weights(wname)
    if entry.architecture != backbone:
        raise DataError(f"weights {entry.name!r} are for backbone {entry.architecture!r}, not {backbone!r}")
    resolved = resolve_weights(entry.name, root)
    size = int(input_size or entry.input_size)
    n = int(src.manifest["n_items"])
    config = {
        "version": FEATURES_VERSION,
        "backbone": backbone,
        "weights": entry.name,
        "weights_sha256": resolved.sha256,
        "modality": modality,
        "input_size": size,
        "source_dataset": src.name,
        "source_manifest_sha256": src.manifest_sha256,
        "preprocessing": (
            f"uint8 {tuple(spec.shape)} / 255 -> bilinear resize to {size}x{size} -> the backbone's normalisation "
            f"(mean {[round(v, 4) for v in entry.mean]}, std {[round(v, 4) for v in entry.std]} on the [0, 1] scale) -> "
            f"frozen {backbone} in eval mode, pooled output before the classifier"
        ),
        "dtype": "float16",
    }
    config_hash = _json_hash(config)

    done_manifest = out_dir / MANIFEST
    if done_manifest.is_file():
        try:
            old = json.loads(done_manifest.read_text())
        except json.JSONDecodeError:
            old = {}
        block = old.get("features", {})
        if block.get("config_hash") == config_hash:
            got = sha256_file(out_dir / "image.npy") if (out_dir / "image.npy").is_file() else None
            if got == block.get("array_sha256"):
                log.info("%s: features up to date (%s, weights sha256 %s)", out_dir, backbone, resolved.sha256[:12])
                return {**block, "status": "up-to-date"}
            log.warning("%s: image.npy sha256 %s does not match the manifest (%s): the cached features are damaged; extracting again",
                        out_dir, got, block.get("array_sha256"))
        else:
            log.info("%s: cached features were made with another configuration; extracting again", out_dir)

    work = out_dir.with_name(f".{out_dir.name}.partial")
    state = {}
    if (work / PROGRESS).is_file():
        try:
            state = json.loads((work / PROGRESS).read_text())
        except json.JSONDecodeError:
            state = {}
        if state.get("config_hash") != config_hash or not (work / f"{modality}.npy").is_file():
            log.info("%s: a partial extraction with another configuration is discarded", work)
            state = {}
    if not state:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    trunk, dim = build_extractor(backbone, str(resolved.path), spec.shape[0], size)
    trunk.to(dev)
    channels_last = dev.type == "cpu"  # depthwise/conv kernels on CPU are markedly faster in NHWC
    if channels_last:
        trunk.to(memory_format=torch.channels_last)
    arr_path = work / f"{modality}.npy"
    if state:
        out = np.load(arr_path, mmap_mode="r+")
        if out.shape != (n, dim) or out.dtype != np.float16:
            raise DataError(f"{arr_path}: partial array has shape {out.shape} {out.dtype}, expected ({n}, {dim}) float16; delete {work}")
        start = int(state["done"])
        status = "resumed"
        log.info("%s: resuming the extraction at row %d of %d", out_dir.name, start, n)
    else:
        out = np.lib.format.open_memmap(arr_path, mode="w+", dtype=np.float16, shape=(n, dim))
        start = 0
        status = "extracted"
        _write_json(work / PROGRESS, {"config_hash": config_hash, "done": 0, "n": n, "dim": dim})
    pixels = src.modality(modality)
    t0 = time.perf_counter()
    since_flush = 0
    with torch.inference_mode(), tqdm(total=n, initial=start, desc=f"features {backbone}", unit="img", disable=not progress, leave=False) as bar:
        for lo in range(start, n, batch_size):
            hi = min(n, lo + batch_size)
            x = torch.from_numpy(np.array(pixels[lo:hi])).to(dev).float().div_(255.0)
            if tuple(x.shape[-2:]) != (size, size):
                x = F_.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            f = trunk(x).float()
            if f.shape != (hi - lo, dim):
                raise DataError(f"{backbone}: expected ({hi - lo}, {dim}) features, got {tuple(f.shape)}")
            out[lo:hi] = f.cpu().numpy().astype(np.float16)
            since_flush += hi - lo
            bar.update(hi - lo)
            if since_flush >= flush_every or hi == n:
                out.flush()  # the rows first, then the record that they are final
                _write_json(work / PROGRESS, {"config_hash": config_hash, "done": hi, "n": n, "dim": dim})
                since_flush = 0
    seconds = time.perf_counter() - t0
    out.flush()
    del out
    if not np.isfinite(np.load(arr_path, mmap_mode="r")).all():
        raise DataError(f"{backbone}: non-finite features (float16 overflow?) in {arr_path}")

    # the rest of the prepared dataset: labels, splits and the other modalities, unchanged
    manifest = json.loads((src_dir / MANIFEST).read_text())
    checksums = dict(manifest["checksums"])
    src_file = manifest["modalities"][modality]["file"]
    checksums.pop(src_file, None)
    for f in checksums:
        _link_or_copy(src_dir / f, work / f)
    array_sha = sha256_file(arr_path)
    checksums[arr_path.name] = array_sha
    block = {
        **config,
        "config_hash": config_hash,
        "counts": {"n_items": n, "dim": int(dim)},
        "array_sha256": array_sha,
        "weights_file": resolved.path.name,
        "device": str(dev),
        "seconds": round(seconds, 3),
        "rows_this_run": n - start,
        "images_per_second": round((n - start) / seconds, 2) if seconds > 0 else None,
    }
    sizes = {f: (work / f).stat().st_size for f in checksums}  # what PreparedDataset.check compares first
    manifest.update(
        schema_version=SCHEMA_VERSION,
        dataset=out_dir.name,
        checksums=checksums,
        sizes=sizes,
        features=block,
    )
    manifest["modalities"] = {**manifest["modalities"], modality: {"kind": "features", "file": arr_path.name, "shape": [int(dim)], "dtype": "float16"}}
    manifest["params"] = {**manifest.get("params", {}), "features": {"backbone": backbone, "weights": entry.name, "input_size": size}}
    (work / PROGRESS).unlink()
    _write_json(work / MANIFEST, manifest)
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    work.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    log.info("%s: %d x %d float16 features in %.1f s (%s)", out_dir, n, dim, seconds, dev)
    return {**block, "status": status}


def feature_info(prepared: PreparedDataset) -> dict[str, Any] | None:
    """The ``features`` block of a feature dataset's manifest (None for an ordinary prepared dataset)."""
    return prepared.manifest.get("features")

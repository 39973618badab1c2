"""Safe, atomic extraction of tar and zip archives.

* Paths that would escape the target folder are refused before anything is written: absolute names,
  drive letters, ``..`` components, links pointing outside, device files. Tar archives are in addition
  extracted with tarfile's ``filter="data"`` (PEP 706); zip members are checked by hand because
  :mod:`zipfile` silently rewrites such names instead of refusing them.
* Extraction goes to a temporary folder inside the raw folder and is renamed into place at the end,
  so an interrupted extraction never leaves a folder that looks complete. The final folder carries a
  stamp (``.hashbench-extracted.json``: archive name and sha256); a folder whose stamp matches the
  archive is reused, so extraction happens once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator

from pipeline.core.errors import DataError

log = logging.getLogger(__name__)

STAMP = ".hashbench-extracted.json"
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeArchive(DataError):
    """An archive member would be written outside the target folder."""


def archive_stem(path: Path) -> str:
    """``train2014.zip`` -> ``train2014``; ``nabirds.tar.gz`` -> ``nabirds``; ``x.tgz`` -> ``x``."""
    name = Path(path).name
    for suffix in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".tar", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def check_member_name(archive: Path, name: str) -> PurePosixPath:
    """The member's relative path, or :class:`UnsafeArchive` when it is absolute or climbs out."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or _DRIVE.match(norm):
        raise UnsafeArchive(f"{archive}: member {name!r} has an absolute path; refusing to extract this archive (it may be malicious or corrupt)")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{archive}: member {name!r} climbs out of the target folder ('..'); refusing to extract this archive (it may be malicious or corrupt)")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _checked_tar_members(archive: Path, tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for m in tf:  # streaming: one pass over a compressed archive
        rel = check_member_name(archive, m.name)
        if m.issym() or m.islnk():
            target = m.linkname.replace("\\", "/")
            base = rel.parent if m.issym() else PurePosixPath(".")
            if target.startswith("/") or _DRIVE.match(target) or _escapes(base / PurePosixPath(target)):
                raise UnsafeArchive(f"{archive}: link {m.name!r} -> {m.linkname!r} points outside the target folder; refusing to extract")
        elif m.isdev() or m.isfifo():
            raise UnsafeArchive(f"{archive}: member {m.name!r} is a device or FIFO; refusing to extract")
        yield m


def _escapes(p: PurePosixPath) -> bool:
    depth = 0
    for part in p.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _extract_tar(archive: Path, tmp: Path) -> int:
    from tqdm import tqdm

    n = 0
    try:
        with tarfile.open(archive, "r:*") as tf, tqdm(desc=f"extract {archive.name}", unit="file", leave=False) as bar:
            def counted():
                nonlocal n
                for m in _checked_tar_members(archive, tf):
                    n += 1
                    bar.update()
                    yield m
            tf.extractall(tmp, members=counted(), filter="data")
    except tarfile.FilterError as exc:
        raise UnsafeArchive(f"{archive}: {exc}; refusing to extract this archive (it may be malicious or corrupt)") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, UnsafeArchive):
            raise
        raise DataError(f"{archive}: cannot be read as a tar archive ({exc}); it is corrupt or truncated: delete it and fetch again") from None
    return n


def _extract_zip(archive: Path, tmp: Path) -> int:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # check everything before writing anything
                check_member_name(archive, info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise UnsafeArchive(f"{archive}: member {info.filename!r} is a symbolic link; refusing to extract")
            root = tmp.resolve()
            from tqdm import tqdm

            for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", leave=False):
                out = Path(zf.extract(info, tmp)).resolve()
                if root not in out.parents and out != root:
                    raise UnsafeArchive(f"{archive}: member {info.filename!r} was written outside {tmp}; refusing")
            return len(infos)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive}: cannot be read as a zip archive ({exc}); it is corrupt or truncated: delete it and fetch again") from None


def extract_archive(archive: Path, dest_dir: Path, *, root: str | None = None, sha256: str = "") -> Path:
    """Extract ``archive`` safely and atomically; return the extracted folder.

    With ``root`` (the archive's single top-level folder, e.g. ``mirflickr`` for mirflickr25k.zip), the
    result is ``dest_dir/root`` and other top-level entries are dropped; without it, the whole archive
    goes to ``dest_dir/<archive stem>``. ``sha256`` (of the archive) is stamped into the result so a
    later call with the same archive reuses it.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    target = dest_dir / (root or archive_stem(archive))
    stamp = {"archive": archive.name, "sha256": sha256}
    if target.is_dir():
        try:
            old = json.loads((target / STAMP).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            old = None
        if old == stamp:
            return target
        if old is None:
            raise DataError(
                f"{target}: exists but was not extracted by HashBench from {archive.name} (no {STAMP}); "
                f"move or delete it and run fetch again"
            )
        log.info("%s: extracted from another version of %s; extracting again", target, archive.name)
    tmp = dest_dir / f".extract-{archive.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        name = archive.name.lower()
        log.info("extracting %s -> %s", archive, target)
        if name.endswith(".zip") or (not tarfile.is_tarfile(archive) and zipfile.is_zipfile(archive)):
            n = _extract_zip(archive, tmp)
        else:
            n = _extract_tar(archive, tmp)
        src = tmp / root if root else tmp
        if not src.is_dir():
            found = sorted(p.name for p in tmp.iterdir())[:10]
            raise DataError(f"{archive}: expected a top-level folder {root}/ inside, found {found}; the archive does not have the official layout")
        (src / STAMP).write_text(json.dumps(stamp) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(src, target)
        log.info("extracted %d members of %s", n, archive.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_extracted(raw_dir: Path, root: str, record: dict) -> Path:
    """``raw_dir/root`` after checking its extraction stamp names an archive of the fetch record with
    the recorded sha256 (so prepare never reads a folder extracted from another or a damaged archive)."""
    target = Path(raw_dir) / root
    try:
        stamp = json.loads((target / STAMP).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        raise DataError(f"{target}: missing or not extracted completely; run `hashbench fetch {record.get('dataset', '')}` again") from None
    if record.get("files", {}).get(stamp.get("archive")) != stamp.get("sha256"):
        raise DataError(f"{target}: was extracted from {stamp.get('archive')} with sha256 {stamp.get('sha256')}, which is not the fetched archive; run `hashbench fetch {record.get('dataset', '')}` again")
    return target

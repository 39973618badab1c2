"""Safe, atomic extraction of tar and zip archives.

* Paths that would escape the target folder are refused before anything is written: absolute names,
  drive letters, ``..`` components, links pointing outside, device files. Tar archives are in addition
  extracted with tarfile's ``filter="data"`` (PEP 706); zip members are checked by hand because
  :mod:`zipfile` silently rewrites such names instead of refusing them.
* Extraction goes to a temporary folder inside the raw folder and is renamed into place at the end,
  so an interrupted extraction never leaves a folder that looks complete.
* An archive is accepted only when it was read completely and matches its own index: a tar's member
  list must end at the end-of-archive marker (tarfile quietly stops at a corrupt or truncated header)
  and the compressed stream is read to its end (gzip / bzip2 / xz CRC and length); a zip member's
  CRC-32 is checked as it is extracted; then every regular member must be on disk with the size its
  header records. Every read or extraction error raises :class:`~pipeline.core.errors.DataError`
  (tarfile's ``errorlevel=2``); none is logged and skipped. The final folder carries a
  stamp (``.hashbench-extracted.json``: archive name and sha256); a folder whose stamp matches the
  archive is reused, so extraction happens once.
"""

from __future__ import annotations

import json
import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator

from pipeline.data.staging import remove_stale, staging_path
from pipeline.core.errors import DataError

log = logging.getLogger(__name__)

STAMP = ".hashbench-extracted.json"
VALIDATION = "members, sizes and stream checked"
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


class _WatchedTarInfo(tarfile.TarInfo):
    """Remembers on the TarFile why the header after the last member was not a member: tarfile ends
    the member list quietly at a corrupt, truncated or missing header, exactly as at the end-of-archive
    marker, so without this a damaged archive extracts a prefix of its members without an error."""

    @classmethod
    def fromtarfile(cls, tarfile_):
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.HeaderError as exc:
            tarfile_.hashbench_end = exc
            raise


def _corrupt(archive: Path, what: str) -> DataError:
    return DataError(f"{archive}: {what}; the archive is corrupt or truncated")


def _check_tar_end(archive: Path, tf: tarfile.TarFile) -> None:
    """The member list ended at the end-of-archive marker, and everything after it is zero padding
    read to the end of the (compressed) stream, which checks the gzip/bzip2/xz CRC and length."""
    end = getattr(tf, "hashbench_end", None)
    if not isinstance(end, tarfile.EOFHeaderError):
        why = {tarfile.InvalidHeaderError: "a corrupt member header", tarfile.TruncatedHeaderError: "a truncated member header",
               tarfile.EmptyHeaderError: "the end of the file without the end-of-archive marker"}.get(type(end), f"{end!r}")
        raise _corrupt(archive, f"the member list stops at byte {tf.offset} at {why}")
    while block := tf.fileobj.read(1 << 20):
        if block.count(0) != len(block):
            raise _corrupt(archive, f"non-zero data after the end-of-archive marker at byte {tf.offset}")


def _check_extracted_sizes(archive: Path, tmp: Path, sizes: dict[str, int]) -> None:
    """Every regular member of the archive's own index is on disk with its recorded size."""
    for name, size in sizes.items():
        path = tmp / name
        try:
            got = path.stat().st_size
        except FileNotFoundError:
            raise _corrupt(archive, f"member {name!r} was not extracted") from None
        if got != size:
            raise _corrupt(archive, f"member {name!r} extracted {got} bytes, its header says {size}")


def _extract_tar(archive: Path, tmp: Path) -> int:
    from tqdm import tqdm

    sizes: dict[str, int] = {}
    n = 0
    try:
        # errorlevel 2: every extraction error raises (tarfile's default logs some and goes on)
        with tarfile.open(archive, "r:*", tarinfo=_WatchedTarInfo, errorlevel=2) as tf, \
                tqdm(desc=f"extract {archive.name}", unit="file", leave=False) as bar:
            def counted():
                nonlocal n
                for m in _checked_tar_members(archive, tf):
                    n += 1
                    rel = str(check_member_name(archive, m.name))
                    sizes.pop(rel, None)  # a later entry of the same name replaces the earlier one
                    if m.isreg():
                        sizes[rel] = m.size
                    bar.update()
                    yield m
            tf.extractall(tmp, members=counted(), filter="data")
            _check_tar_end(archive, tf)
    except tarfile.FilterError as exc:
        raise UnsafeArchive(f"{archive}: {exc}; refusing to extract this archive (it may be malicious or corrupt)") from None
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise _corrupt(archive, f"cannot be read as a tar archive ({type(exc).__name__}: {exc})") from None
    _check_extracted_sizes(archive, tmp, sizes)
    return n


def _extract_zip(archive: Path, tmp: Path) -> int:
    from tqdm import tqdm

    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # check everything before writing anything
                check_member_name(archive, info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise UnsafeArchive(f"{archive}: member {info.filename!r} is a symbolic link; refusing to extract")
            root = tmp.resolve()
            sizes = {}
            for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", leave=False):
                out = Path(zf.extract(info, tmp)).resolve()  # reads each member to its end: checks its CRC-32
                if root not in out.parents and out != root:
                    raise UnsafeArchive(f"{archive}: member {info.filename!r} was written outside {tmp}; refusing")
                if not info.is_dir():
                    sizes[str(out.relative_to(root))] = info.file_size
    except DataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error, lzma.LZMAError, NotImplementedError) as exc:
        raise _corrupt(archive, f"cannot be read as a zip archive ({type(exc).__name__}: {exc})") from None
    _check_extracted_sizes(archive, tmp, sizes)
    return len(infos)


def extract_archive(archive: Path, dest_dir: Path, *, root: str | None = None, sha256: str = "") -> Path:
    """Extract ``archive`` safely and atomically; return the extracted folder.

    With ``root`` (the archive's single top-level folder, e.g. ``mirflickr`` for mirflickr25k.zip), the
    result is ``dest_dir/root`` and other top-level entries are dropped; without it, the whole archive
    goes to ``dest_dir/<archive stem>``. ``sha256`` (of the archive) is stamped into the result so a
    later call with the same archive reuses it.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    target = dest_dir / (root or archive_stem(archive))
    # "validated": extracted with the complete checks above; a folder stamped before them is extracted again
    stamp = {"archive": archive.name, "sha256": sha256, "validated": VALIDATION}
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
    remove_stale(target, mine=("extract",))
    tmp = staging_path(target, "extract")
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

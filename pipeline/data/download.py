"""Resumable, verified downloads; the trust-on-first-use checksum lock; manual-placement messages.

Every raw file a dataset needs is a :class:`RemoteFile`: a name inside ``data/raw/<dataset>/``, an
official URL (``None`` for license-gated files the user places by hand) and the checksums the source
publishes, if any. :func:`fetch_file` makes the file present and verified:

* already present: verified against the published checksum or the lock (no network needed);
* missing: downloaded over HTTP into ``<name>.part`` with ``Range`` requests, so a cut connection
  resumes where it stopped (also across runs: a left-over ``.part`` is continued), with a tqdm
  progress bar, retries with exponential backoff, and a short connect timeout so that a machine
  without network fails fast with a message naming the URL and the manual alternative;
* checksums: the published sha256 / md5 when there is one; otherwise the sha256 recorded in the
  committed lock file ``pipeline/data/checksums.lock.json`` at the first download (trust on first
  use), checked on every later fetch. A mismatch moves the file aside to ``<name>.bad`` (it is never
  used) and raises a :class:`~pipeline.core.errors.DataError` naming the file, both hashes and what to do.
* trust is recorded last: a file with nothing to compare against is only *pending* trust until the
  dataset's fetch has extracted and validated everything (:func:`fetch_archive`, the layout checks)
  and writes its fetch record (:func:`record_fetch`); only then do its hashes enter the lock. A
  truncated, corrupt or malicious archive is refused before that, moved aside, and leaves the lock as
  it was, so the good archive fetched next is accepted, not rejected as a mismatch.
* re-trusting on purpose (the source really published a new version): ``hashbench fetch <dataset>
  --retrust`` (:func:`retrusting`) ignores the dataset's lock entries for that fetch and replaces them
  with the new hashes once the fetch completes; published checksums are still enforced. Deleting the
  entry ``"<dataset>/<file>"`` from the lock file does the same for one file.

Hashing a 13 GB archive takes a minute, so verified digests are cached in
``data/raw/<dataset>/.hashbench-verified.json`` keyed by (size, mtime): a file that has not changed
since it was verified is not hashed again (the same idea as DVC's state database).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from pipeline.data.archives import extract_archive
from pipeline.data.fetching import FETCH_RECORD, write_fetch_record
from pipeline.core.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_LOCK = Path(__file__).with_name("checksums.lock.json")
LOCK_ENV = "HASHBENCH_CHECKSUM_LOCK"  # another lock file (tests, or a private mirror's hashes)
VERIFIED_CACHE = ".hashbench-verified.json"


class DownloadError(DataError):
    """A download failed (no network, HTTP error, too many interruptions)."""


class ChecksumMismatch(DataError):
    """A raw file does not hash to the published or locked checksum; it was moved aside."""


@dataclass(frozen=True)
class RemoteFile:
    """One raw file of a dataset: its name under ``data/raw/<dataset>/`` and where it comes from."""

    name: str
    url: str | None = None  # None: license-gated or distributed on request, placed by hand
    sha256: str | None = None  # published sha256, when the source publishes one
    md5: str | None = None  # published md5, when the source publishes one
    size: int | None = None  # published size in bytes (a cheap early check)
    sha256_prefix: str | None = None  # leading hex digits of the sha256 published in the file name (torch hub convention)
    description: str = ""  # what the file is (for manual-placement messages)

    def with_mirror(self, mirror: str | None) -> "RemoteFile":
        """The same file fetched from ``<mirror>/<name>`` instead of the official URL."""
        if not mirror:
            return self
        return replace(self, url=f"{mirror.rstrip('/')}/{self.name}")


@dataclass
class DownloadSettings:
    """Network behaviour; module-level defaults in :data:`SETTINGS` (tests shorten the backoff)."""

    connect_timeout: float = 10.0  # seconds to establish a connection (fail fast when offline)
    read_timeout: float = 60.0  # seconds without a byte before the transfer counts as stalled
    retries: int = 5  # interrupted transfers / 5xx answers resumed this many times
    connect_retries: int = 2  # connection refused / DNS / connect timeout: few retries
    backoff: float = 1.0  # first wait in seconds; doubles each retry
    max_backoff: float = 30.0
    chunk_size: int = 1 << 20
    progress: bool = True
    headers: Mapping[str, str] = field(default_factory=lambda: {"User-Agent": "hashbench-fetch/1"})


SETTINGS = DownloadSettings()


# -- digests ----------------------------------------------------------------------------------------


def file_digests(path: Path, chunk: int = 1 << 20) -> tuple[str, str]:
    """(sha256, md5) hex digests of a file, in one pass."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _cache_path(path: Path) -> Path:
    return path.parent / VERIFIED_CACHE


def cached_digests(path: Path) -> tuple[str, str]:
    """:func:`file_digests`, reusing the digests cached for an unchanged (size, mtime) file."""
    path = Path(path)
    st = path.stat()
    cache_file = _cache_path(path)
    cache = _read_json(cache_file)
    hit = cache.get(path.name)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"], hit["md5"]
    sha, md5 = file_digests(path)
    cache[path.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha, "md5": md5}
    _write_json(cache_file, cache)
    return sha, md5


def _forget_cached(path: Path) -> None:
    cache_file = _cache_path(path)
    cache = _read_json(cache_file)
    if cache.pop(path.name, None) is not None:
        _write_json(cache_file, cache)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError:
        return {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# -- the lock file ----------------------------------------------------------------------------------


class ChecksumLock:
    """The committed sha256 lock: ``{"version": 1, "files": {"<dataset>/<file>": {...}}}``.

    Entries hold ``sha256``, ``size``, ``url`` and ``origin`` (``published``: copied from the source;
    ``first-use``: recorded at the first download, trust on first use; ``local``: a derived archive
    described in its SOURCES.md). Writes are read-modify-write under an exclusive file lock.
    """

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path or os.environ.get(LOCK_ENV) or DEFAULT_LOCK)

    def entries(self) -> dict[str, dict]:
        data = _read_json(self.path)
        return dict(data.get("files", {}))

    def get(self, dataset: str, name: str) -> dict | None:
        return self.entries().get(f"{dataset}/{name}")

    def record(self, dataset: str, name: str, *, sha256: str, size: int, url: str | None, origin: str = "first-use", warn: bool = True) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            data = _read_json(self.path) or {"version": 1, "files": {}}
            data.setdefault("files", {})[f"{dataset}/{name}"] = {
                "sha256": sha256,
                "size": int(size),
                "url": url,
                "origin": origin,
                "recorded": time.strftime("%Y-%m-%d"),
            }
            data["files"] = dict(sorted(data["files"].items()))
            _write_json(self.path, data)
        if origin == "published" or not warn:
            return
        log.warning(
            "%s/%s: no published checksum; recorded sha256 %s in %s (trust on first use). Commit that file so later fetches are verified against it.",
            dataset, name, sha256, self.path,
        )


# -- trust recorded last ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pending:
    lock: ChecksumLock
    sha256: str
    size: int
    url: str | None
    origin: str
    warn: bool


_PENDING: dict[tuple[str, str], _Pending] = {}  # (dataset, file name) -> verified but not yet trusted
_RETRUST: set[str] = set()  # datasets whose lock entries this fetch replaces (``fetch --retrust``)


@contextmanager
def retrusting(dataset: str) -> Iterator[None]:
    """Within the block, ``dataset``'s lock entries are not checked; the fetch's :func:`record_fetch`
    replaces them with the hashes of the files it validated. A fetch that fails changes nothing."""
    _RETRUST.add(dataset)
    try:
        yield
    finally:
        _RETRUST.discard(dataset)
        for key in [k for k in _PENDING if k[0] == dataset]:
            del _PENDING[key]


def is_pending(dataset: str, name: str) -> bool:
    """Whether ``dataset/name`` was verified by nothing but its own hash so far (its trust not recorded)."""
    return (dataset, name) in _PENDING


def commit_trust(dataset: str, files: Mapping[str, str]) -> None:
    """Record in the lock the pending first-use hashes of ``files`` ({name: sha256}), now that the
    dataset's fetch has validated them completely."""
    for name, sha in files.items():
        pending = _PENDING.pop((dataset, name), None)
        if pending is not None and pending.sha256 == sha:
            pending.lock.record(dataset, name, sha256=sha, size=pending.size, url=pending.url, origin=pending.origin, warn=pending.warn)


def _retrust_hint(dataset: str, name: str, lock: ChecksumLock) -> str:
    return (f"If you have checked that the source really published a new version, re-trust it on purpose: "
            f"`hashbench fetch {dataset} --retrust` records the new sha256 in {lock.path} once the file has been "
            f"fetched and validated completely (or delete the entry \"{dataset}/{name}\" from that file).")


# -- verification -----------------------------------------------------------------------------------


def move_aside(path: Path) -> Path:
    """Rename ``path`` to ``path.bad`` (``.bad.1``, ... when taken) and return the new path."""
    bad = path.with_name(path.name + ".bad")
    n = 0
    while bad.exists():
        n += 1
        bad = path.with_name(f"{path.name}.bad.{n}")
    os.replace(path, bad)
    _forget_cached(path)
    return bad


def verify_file(path: Path, rf: RemoteFile, dataset: str, lock: ChecksumLock | None = None, *, record: bool = True, warn: bool = True) -> str:
    """Verify ``path`` against the published checksums of ``rf`` and the lock; return its sha256.

    With nothing to compare against (or under :func:`retrusting`), the sha256 becomes *pending* trust
    when ``record``: :func:`record_fetch` (the end of a complete, validated fetch) writes it to the
    lock. On a mismatch the file is moved to ``*.bad`` and :class:`ChecksumMismatch` is raised.
    """
    lock = lock or ChecksumLock()
    path = Path(path)
    size = path.stat().st_size
    sha, md5 = cached_digests(path)
    entry = lock.get(dataset, rf.name)
    retrust = dataset in _RETRUST and entry is not None and entry.get("origin") != "published"
    if retrust:
        entry = None
    checks = []
    if rf.sha256:
        checks.append(("sha256", rf.sha256.lower(), sha, "published"))
    if rf.md5:
        checks.append(("md5", rf.md5.lower(), md5, "published"))
    if rf.sha256_prefix:
        prefix = rf.sha256_prefix.lower()
        checks.append(("sha256 prefix", prefix, sha[: len(prefix)], "published in the file name"))
    if entry and entry.get("sha256"):
        checks.append(("sha256", entry["sha256"].lower(), sha, f"locked in {lock.path}"))
    if rf.size is not None and size != rf.size:
        checks.insert(0, ("size", str(rf.size), str(size), "published"))
    for algo, expected, got, origin in checks:
        if expected != got:
            bad = move_aside(path)
            sizes = f" Size: {size} bytes, published {rf.size}." if rf.size is not None and size != rf.size else ""
            if algo == "size":  # name both hashes as well: the published one is the md5/sha256
                algo, expected, got = ("sha256", rf.sha256, sha) if rf.sha256 else ("md5", rf.md5, md5) if rf.md5 else ("size", expected, got)
            how = (_retrust_hint(dataset, rf.name, lock) if origin.startswith("locked") else
                   "The published checksum is part of HashBench's code; a new upstream version needs a code change.")
            raise ChecksumMismatch(
                f"{path}: {algo} mismatch for {dataset}/{rf.name}: expected {expected} ({origin}), got {got}.{sizes} "
                f"The file was moved aside to {bad} and will not be used. {_what_to_do(dataset, rf, path)} {how}"
            )
    if not (entry and entry.get("sha256")) and record:
        origin = "published" if rf.sha256 else (
            "first-use (md5 matched the published md5)" if rf.md5
            else "first-use (sha256 prefix matched the file name)" if rf.sha256_prefix else "first-use"
        )
        if retrust:
            origin += ", re-trusted (fetch --retrust)"
        _PENDING[(dataset, rf.name)] = _Pending(lock, sha, size, rf.url, origin, warn)
    return sha


def _what_to_do(dataset: str, rf: RemoteFile, path: Path) -> str:
    # weights files are checked under the lock namespace "weights/<entry>" (pipeline/data/weights.py)
    command = f"hashbench fetch-weights {dataset.split('/', 1)[1]}" if dataset.startswith("weights/") else f"hashbench fetch {dataset}"
    if rf.url:
        return f"Run `{command}` again to download it afresh from {rf.url}, or place a good copy at {path}."
    return f"Place a good copy of {rf.name} at {path} and run `{command}` again."


# -- HTTP download ----------------------------------------------------------------------------------


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED = re.compile(r"bytes\s+\*/(\d+)")


def _hint(manual_hint: str) -> str:
    return f"; {manual_hint.rstrip('. ')}" if manual_hint else ""


def _sleep(settings: DownloadSettings, attempt: int) -> None:
    time.sleep(min(settings.max_backoff, settings.backoff * 2 ** max(0, attempt - 1)))


def _blocks(resp, chunk_size: int):
    """The raw bytes of a streamed response (no content decoding). With urllib3 2 ``read1`` hands over
    whatever arrived, so a cut loses nothing already received; otherwise ``iter_content`` chunks."""
    raw = resp.raw
    if hasattr(raw, "read1"):
        while block := raw.read1(chunk_size, decode_content=False):
            yield block
    else:
        resp.raw.decode_content = False
        yield from resp.iter_content(chunk_size)


def download(url: str, dest: Path, *, settings: DownloadSettings | None = None, manual_hint: str = "") -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming with HTTP Range requests.

    Transfers cut mid-file are resumed up to ``settings.retries`` times (exponential backoff); failures
    to connect at all (refused, DNS, connect timeout) are retried only ``settings.connect_retries``
    times, so an offline machine fails within about half a minute with a message naming the URL.
    A left-over ``.part`` from an earlier run is continued, not restarted.
    """
    import requests
    import urllib3
    from tqdm import tqdm

    s = settings or SETTINGS
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    interrupted = connect_failures = 0
    last_error = ""
    with requests.Session() as session:
        while True:
            offset = part.stat().st_size if part.exists() else 0
            headers = {**s.headers, "Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            try:
                resp = session.get(url, headers=headers, stream=True, timeout=(s.connect_timeout, s.read_timeout))
            except requests.exceptions.RequestException as exc:
                connect_failures += 1
                last_error = f"{type(exc).__name__}: {exc}"
                if connect_failures > s.connect_retries:
                    raise DownloadError(
                        f"{url}: cannot connect ({last_error}) after {connect_failures} attempts "
                        f"(connect timeout {s.connect_timeout:g} s). Is this machine offline? "
                        f"Alternative: download the file elsewhere and place it at {dest}, then run fetch again"
                        f"{_hint(manual_hint)}."
                        + (f" The partial download {part} ({offset} bytes) is kept and will be resumed." if offset else "")
                    ) from None
                log.warning("%s: cannot connect (%s); retry %d/%d", url, last_error, connect_failures, s.connect_retries)
                _sleep(s, connect_failures)
                continue
            with resp:
                status = resp.status_code
                if status == 416 and offset:
                    m = _UNSATISFIED.search(resp.headers.get("Content-Range", ""))
                    if m and int(m.group(1)) == offset:
                        break  # the .part is already complete
                    log.warning("%s: server refused to resume at byte %d; restarting", url, offset)
                    part.unlink()
                    continue
                if status in (408, 429) or status >= 500:
                    interrupted += 1
                    last_error = f"HTTP {status}"
                    if interrupted > s.retries:
                        raise DownloadError(f"{url}: HTTP {status} after {interrupted} attempts; try again later, or place the file at {dest}"
                                            f"{_hint(manual_hint)}.")
                    log.warning("%s: HTTP %d; retry %d/%d", url, status, interrupted, s.retries)
                    _sleep(s, interrupted)
                    continue
                if status >= 400:
                    raise DownloadError(
                        f"{url}: HTTP {status} {resp.reason}. The URL may have moved: check the dataset's docstring for the source, "
                        f"set a mirror, or place the file at {dest} by hand{_hint(manual_hint)}."
                    )
                total: int | None
                if offset and status == 206:
                    m = _CONTENT_RANGE.search(resp.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != offset:
                        log.warning("%s: unexpected Content-Range %r; restarting", url, resp.headers.get("Content-Range"))
                        part.unlink()
                        continue
                    total = int(m.group(3)) if m.group(3) != "*" else None
                    mode = "ab"
                else:
                    if offset:
                        log.info("%s: server does not support resuming; restarting from byte 0", url)
                    offset = 0
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    mode = "wb"
                try:
                    with open(part, mode) as f, tqdm(
                        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=dest.name, disable=not s.progress, leave=False,
                    ) as bar:
                        for block in _blocks(resp, s.chunk_size):
                            f.write(block)
                            bar.update(len(block))
                except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
                    interrupted += 1
                    last_error = f"{type(exc).__name__}: {exc}"
                    got = part.stat().st_size if part.exists() else 0
                    if interrupted > s.retries:
                        raise DownloadError(
                            f"{url}: transfer interrupted {interrupted} times (last: {last_error}); {got} bytes are kept in {part}. "
                            f"Run fetch again to resume, or place the file at {dest}{_hint(manual_hint)}."
                        ) from None
                    log.warning("%s: interrupted at byte %d (%s); resuming, retry %d/%d", url, got, last_error, interrupted, s.retries)
                    _sleep(s, interrupted)
                    continue
            got = part.stat().st_size
            if total is not None and got != total:
                interrupted += 1
                if got > total or interrupted > s.retries:
                    if got > total:
                        part.unlink()
                    raise DownloadError(f"{url}: received {got} of {total} bytes after {interrupted} attempts; run fetch again to resume.")
                log.warning("%s: short transfer (%d of %d bytes); resuming", url, got, total)
                _sleep(s, interrupted)
                continue
            break
    os.replace(part, dest)
    return dest


# -- fetching a dataset's files ---------------------------------------------------------------------


def fetch_file(rf: RemoteFile, raw_dir: Path, dataset: str, *, lock: ChecksumLock | None = None,
               settings: DownloadSettings | None = None, manual_hint: str = "") -> str:
    """Make ``raw_dir/rf.name`` present and verified; return its sha256.

    A present file is verified (no network). A file that fails verification is moved aside and, when
    it has a URL, downloaded afresh (a second mismatch raises). A missing file without URL raises the
    manual-placement error.
    """
    lock = lock or ChecksumLock()
    raw_dir = Path(raw_dir)
    path = raw_dir / rf.name
    if path.is_file():
        try:
            return verify_file(path, rf, dataset, lock)
        except ChecksumMismatch as exc:
            if not rf.url:
                raise
            log.warning("%s; downloading it again", exc)
    if not rf.url:
        raise manual_placement_error(dataset, raw_dir, [rf], hint=manual_hint)
    log.info("downloading %s -> %s", rf.url, path)
    download(rf.url, path, settings=settings, manual_hint=manual_hint)
    return verify_file(path, rf, dataset, lock)


def fetch_archive(rf: RemoteFile, raw_dir: Path, dataset: str, *, root: str | None = None, lock: ChecksumLock | None = None,
                  settings: DownloadSettings | None = None, manual_hint: str = "") -> tuple[str, Path]:
    """:func:`fetch_file` then :func:`~pipeline.data.archives.extract_archive`; return (sha256, extracted folder).

    An archive that cannot be extracted completely and validated (corrupt, truncated, unsafe) and
    whose hash nothing vouches for yet (pending trust) is moved aside to ``*.bad``, so the next fetch
    downloads it afresh; its hash never enters the lock. When the refused archive's hash *is* locked,
    the lock entry itself is suspect, and the message says how to re-trust.
    """
    lock = lock or ChecksumLock()
    sha = fetch_file(rf, raw_dir, dataset, lock=lock, settings=settings, manual_hint=manual_hint)
    path = Path(raw_dir) / rf.name
    try:
        return sha, extract_archive(path, raw_dir, root=root, sha256=sha)
    except DataError as exc:
        if is_pending(dataset, rf.name):
            del _PENDING[(dataset, rf.name)]
            bad = move_aside(path)
            again = (f"run `hashbench fetch {dataset}` again to download it afresh from {rf.url}" if rf.url
                     else f"place a good copy at {path} and run `hashbench fetch {dataset}` again")
            raise type(exc)(f"{exc}. It was refused: moved aside to {bad}, its sha256 not recorded in {lock.path}; {again}.") from None
        if rf.sha256 or rf.md5:
            raise type(exc)(f"{exc}. Yet it matches the checksum its source publishes: the official archive itself cannot be "
                            f"extracted here; please report this as a HashBench bug.") from None
        raise type(exc)(f"{exc}. Yet it matches the sha256 locked in {lock.path}, so that entry itself is suspect: delete "
                        f"{path}, then run `hashbench fetch {dataset} --retrust` to fetch a good copy and record its sha256 once "
                        f"it has been validated completely.") from None


def manual_placement_error(dataset: str, raw_dir: Path, files: Sequence[RemoteFile], *, hint: str = "",
                           found: Iterable[str] = ()) -> DataError:
    """One clear message: which files to place where, and what to run afterwards."""
    lines = [f"{dataset}: the raw files must be placed by hand under {raw_dir}/ (they cannot be downloaded automatically)."]
    if hint:
        lines.append(hint)
    lines.append("Expected:")
    for rf in files:
        lines.append(f"  {raw_dir / rf.name}" + (f"  -- {rf.description}" if rf.description else ""))
    found = list(found)
    if found:
        lines.append("Found: " + ", ".join(found))
    lines.append(f"Then run `hashbench fetch {dataset}` again.")
    return DataError("\n".join(lines))


def record_fetch(raw_dir: Path, dataset: str, files: Mapping[str, str], source: str) -> None:
    """The end of a complete, validated fetch: record the pending first-use hashes of ``files`` in the
    lock, then write FETCH.json (what prepare reads first) listing the files and their sha256."""
    commit_trust(dataset, files)
    write_fetch_record(raw_dir, dataset, files, source)


def read_verified_record(raw_dir: Path, dataset: str) -> dict:
    """The FETCH.json of ``raw_dir`` with every listed file verified (cached digests; mismatch: moved aside)."""
    raw_dir = Path(raw_dir)
    path = raw_dir / FETCH_RECORD
    if not path.is_file():
        raise DataError(f"{path}: {dataset} has not been fetched; run `hashbench fetch {dataset}` first")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: corrupt fetch record ({exc}); run `hashbench fetch {dataset}` again") from None
    for name, expected in record.get("files", {}).items():
        f = raw_dir / name
        if not f.is_file():
            raise DataError(f"{f}: listed in {path} but missing; run `hashbench fetch {dataset}` again")
        got, _ = cached_digests(f)
        if got != expected:
            bad = move_aside(f)
            raise ChecksumMismatch(
                f"{f}: sha256 mismatch: the fetch record says {expected}, the file hashes to {got}. It was moved aside to "
                f"{bad} and will not be used; run `hashbench fetch {dataset}` again."
            )
    return record


"""Resumable downloads, checksums and the trust-on-first-use lock, safe extraction (no network)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from pipeline.data import download as dl
from pipeline.data.archives import UnsafeArchive, check_extracted, extract_archive
from pipeline.data.download import ChecksumLock, ChecksumMismatch, DownloadError, RemoteFile, fetch_file
from pipeline.core.errors import DataError
from tests.fixtures_archives import RangeServer, closed_port_url, evil_tar, evil_zip, _tar, _zip


@pytest.fixture(autouse=True)
def fast_network(monkeypatch, tmp_path):
    """Short backoff, no progress bars, and a throw-away lock file (the committed one is never touched)."""
    monkeypatch.setattr(dl, "SETTINGS", dl.DownloadSettings(backoff=0.01, connect_timeout=2.0, read_timeout=5.0, progress=False))
    monkeypatch.setenv(dl.LOCK_ENV, str(tmp_path / "lock.json"))


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    payload = np.random.default_rng(0).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
    (root / "blob.bin").write_bytes(payload)
    return root, payload


def test_download_resumes_after_a_cut_with_range(served, tmp_path):
    root, payload = served
    with RangeServer(root, cut_once={"blob.bin"}) as srv:
        dest = tmp_path / "raw" / "blob.bin"
        dl.download(f"{srv.url}/blob.bin", dest)
    assert dest.read_bytes() == payload
    assert not dest.with_name("blob.bin.part").exists()
    assert srv.requests[0] == ("blob.bin", None)
    assert srv.requests[1][1] == f"bytes={len(payload) // 2}-"  # resumed exactly where the cut happened
    assert len(srv.requests) == 2


def test_leftover_part_file_is_continued(served, tmp_path):
    root, payload = served
    dest = tmp_path / "raw" / "blob.bin"
    dest.parent.mkdir()
    dest.with_name("blob.bin.part").write_bytes(payload[:1000])
    with RangeServer(root) as srv:
        dl.download(f"{srv.url}/blob.bin", dest)
    assert dest.read_bytes() == payload
    assert srv.requests == [("blob.bin", "bytes=1000-")]


def test_complete_part_file_gets_416_and_is_kept(served, tmp_path):
    root, payload = served
    dest = tmp_path / "raw" / "blob.bin"
    dest.parent.mkdir()
    dest.with_name("blob.bin.part").write_bytes(payload)
    with RangeServer(root) as srv:
        dl.download(f"{srv.url}/blob.bin", dest)
    assert dest.read_bytes() == payload


def test_offline_fails_fast_naming_url_and_manual_alternative(tmp_path):
    url = closed_port_url() + "/mirflickr25k.zip"
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as err:
        dl.download(url, tmp_path / "mirflickr25k.zip", manual_hint="or set a mirror")
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert url in msg and "place it at" in msg and str(tmp_path / "mirflickr25k.zip") in msg and "3 attempts" in msg


def test_transient_503_is_retried(served, tmp_path):
    root, payload = served
    with RangeServer(root, fail_once={"blob.bin"}) as srv:
        dl.download(f"{srv.url}/blob.bin", tmp_path / "blob.bin")
    assert (tmp_path / "blob.bin").read_bytes() == payload and len(srv.requests) == 2


def test_http_404_is_a_clear_error(served, tmp_path):
    root, _ = served
    with RangeServer(root) as srv, pytest.raises(DownloadError, match="HTTP 404"):
        dl.download(f"{srv.url}/nope.bin", tmp_path / "nope.bin")


def test_tofu_lock_records_then_verifies_and_mismatch_moves_file_aside(served, tmp_path):
    root, payload = served
    raw = tmp_path / "raw"
    lock = ChecksumLock(tmp_path / "lock.json")
    with RangeServer(root) as srv:
        rf = RemoteFile("blob.bin", f"{srv.url}/blob.bin")
        sha = fetch_file(rf, raw, "toy", lock=lock)
        assert lock.get("toy", "blob.bin") is None  # pending: trusted only when the whole fetch completes
        dl.record_fetch(raw, "toy", {"blob.bin": sha}, source="test")
        entry = lock.get("toy", "blob.bin")
        assert entry["sha256"] == sha and entry["origin"] == "first-use" and entry["size"] == len(payload)
        # present and verified: no network needed
        n = len(srv.requests)
        assert fetch_file(rf, raw, "toy", lock=lock) == sha
        assert len(srv.requests) == n
        # the source changes: a fresh download no longer matches the lock
        (raw / "blob.bin").unlink()
        (root / "blob.bin").write_bytes(payload[::-1])
        with pytest.raises(ChecksumMismatch) as err:
            fetch_file(rf, raw, "toy", lock=lock)
    msg = str(err.value)
    assert "blob.bin" in msg and sha in msg and "moved aside" in msg and "fetch toy" in msg and "hashbench fetch toy --retrust" in msg
    assert not (raw / "blob.bin").exists() and (raw / "blob.bin.bad").is_file()


def test_corrupted_local_file_is_moved_aside_and_downloaded_again(served, tmp_path):
    root, payload = served
    raw = tmp_path / "raw"
    lock = ChecksumLock(tmp_path / "lock.json")
    with RangeServer(root) as srv:
        rf = RemoteFile("blob.bin", f"{srv.url}/blob.bin")
        sha = fetch_file(rf, raw, "toy", lock=lock)
        dl.record_fetch(raw, "toy", {"blob.bin": sha}, source="test")
        with open(raw / "blob.bin", "r+b") as f:
            f.write(b"XXXX")
        assert fetch_file(rf, raw, "toy", lock=lock) == sha
    assert (raw / "blob.bin").read_bytes() == payload and (raw / "blob.bin.bad").is_file()


def test_published_checksum_mismatch_names_both_hashes(served, tmp_path):
    root, payload = served
    with RangeServer(root) as srv:
        rf = RemoteFile("blob.bin", f"{srv.url}/blob.bin", md5="c58f30108f718f92721af3b95e74349a")
        with pytest.raises(ChecksumMismatch) as err:
            fetch_file(rf, tmp_path / "raw", "toy")
    got_md5 = dl.file_digests(tmp_path / "raw" / "blob.bin.bad")[1]
    assert "c58f30108f718f92721af3b95e74349a" in str(err.value) and got_md5 in str(err.value) and "published" in str(err.value)
    assert not ChecksumLock().get("toy", "blob.bin")  # nothing recorded from a bad file


def test_manual_file_missing_gives_placement_message(tmp_path):
    rf = RemoteFile("secret.tar.gz", None, description="the license-gated archive")
    with pytest.raises(DataError) as err:
        fetch_file(rf, tmp_path / "raw", "toy")
    msg = str(err.value)
    assert str(tmp_path / "raw" / "secret.tar.gz") in msg and "by hand" in msg and "hashbench fetch toy" in msg


def test_verified_digest_cache_skips_rehash(served, tmp_path, monkeypatch):
    root, _ = served
    path = tmp_path / "blob.bin"
    path.write_bytes((root / "blob.bin").read_bytes())
    first = dl.cached_digests(path)
    monkeypatch.setattr(dl, "file_digests", lambda p: (_ for _ in ()).throw(AssertionError("rehashed")))
    assert dl.cached_digests(path) == first
    cache = json.loads((tmp_path / dl.VERIFIED_CACHE).read_text())
    assert cache["blob.bin"]["sha256"] == first[0]


# -- extraction -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_tar_escaping_paths_are_refused(tmp_path, kind):
    archive = evil_tar(tmp_path / "in" / "evil.tar.gz", kind)
    dest = tmp_path / "raw"
    dest.mkdir()
    with pytest.raises(UnsafeArchive) as err:
        extract_archive(archive, dest, root="root")
    assert "evil.tar.gz" in str(err.value) and "refusing" in str(err.value)
    assert sorted(p.name for p in dest.iterdir()) == []  # no half-extracted folder, no temp folder
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "backslash"])
def test_zip_escaping_paths_are_refused(tmp_path, kind):
    archive = evil_zip(tmp_path / "in" / "evil.zip", kind)
    dest = tmp_path / "raw"
    dest.mkdir()
    with pytest.raises(UnsafeArchive, match="refusing"):
        extract_archive(archive, dest, root="mirflickr")
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()


def test_extraction_is_atomic_and_reused(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"top/x.txt": b"1", "top/sub/y.txt": b"2", "__MACOSX/junk": b""})
    dest = tmp_path / "raw"
    dest.mkdir()
    out = extract_archive(archive, dest, root="top", sha256="abc")
    assert out == dest / "top" and (out / "sub" / "y.txt").read_bytes() == b"2"
    assert sorted(p.name for p in dest.iterdir()) == ["top"]
    (out / "x.txt").write_bytes(b"kept")  # same archive hash: not extracted again
    extract_archive(archive, dest, root="top", sha256="abc")
    assert (out / "x.txt").read_bytes() == b"kept"
    extract_archive(archive, dest, root="top", sha256="def")  # another version: extracted afresh
    assert (out / "x.txt").read_bytes() == b"1"


def test_interrupted_extraction_leaves_nothing_that_looks_complete(tmp_path):
    good = {f"top/f{i}.txt": b"x" * 100 for i in range(20)}
    archive = _tar(tmp_path / "t.tar.gz", good)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])  # truncated download
    dest = tmp_path / "raw"
    dest.mkdir()
    with pytest.raises(DataError, match="corrupt or truncated"):
        extract_archive(archive, dest, root="top")
    assert list(dest.iterdir()) == []


def test_missing_root_folder_is_a_layout_error(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"other/x.txt": b"1"})
    with pytest.raises(DataError, match="expected a top-level folder top/"):
        extract_archive(archive, tmp_path, root="top")


def test_foreign_folder_is_not_overwritten(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"top/x.txt": b"1"})
    (tmp_path / "raw" / "top").mkdir(parents=True)
    with pytest.raises(DataError, match="not extracted by HashBench"):
        extract_archive(archive, tmp_path / "raw", root="top")


def test_prepare_side_check_ties_extracted_folder_to_fetched_archive(tmp_path):
    archive = _zip(tmp_path / "raw" / "a.zip", {"top/x.txt": b"1"})
    extract_archive(archive, tmp_path / "raw", root="top", sha256="abc")
    assert check_extracted(tmp_path / "raw", "top", {"dataset": "toy", "files": {"a.zip": "abc"}}) == tmp_path / "raw" / "top"
    with pytest.raises(DataError, match="not the fetched archive"):
        check_extracted(tmp_path / "raw", "top", {"dataset": "toy", "files": {"a.zip": "other"}})
    with pytest.raises(DataError, match="hashbench fetch toy"):
        check_extracted(tmp_path / "raw", "missing", {"dataset": "toy", "files": {}})

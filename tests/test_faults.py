"""Faults on the data side (issue 18): each case reproduced on tiny data, with the behaviour expected now.

* a corrupted or truncated prepared array is refused before training, naming the file; unchanged
  files are not hashed again (the verified-digest cache), a changed one is;
* a corrupted and a truncated archive served before the good one: both refused and moved aside, the
  checksum lock unchanged by them, the good archive accepted and only then recorded; a new upstream
  version is a mismatch that names ``--retrust``, and ``hashbench fetch --retrust`` re-trusts it;
* a ``/`` (or any character outside ``[A-Za-z0-9_.-]``) in a suite, variant or profile name: one clear
  error naming the key, exit code 2;
* ``kill -9`` during prepare: the next prepare removes the staging folders the killed process left
  (only those whose PID is dead on this host) and restores the previous version if the kill fell
  between the two renames.

Archives are served from 127.0.0.1 (:class:`tests.fixtures_archives.RangeServer`); nothing downloads
from the internet. Everything here runs in a few seconds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline import cli
from pipeline.config import load_params
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.paths import ProjectPaths
from pipeline.data import download as dl
from pipeline.data import formats
from pipeline.data.formats import ModalityData, PreparedDataset, write_prepared
from pipeline.data.registry import get_dataset
from pipeline.data.splits import Split
from pipeline.data.staging import remove_stale, staging_path
from pipeline.train.loop import run_trial
from tests.conftest import REPO, trial_spec, write_params
from tests.fixtures_archives import RangeServer, build_imagenette

# -- item 3: corrupted prepared data ----------------------------------------------------------------


def _xor64(path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        block = f.read(64)
        f.seek(at)
        f.write(bytes(b ^ 0xFF for b in block))


@pytest.fixture
def digits_copy(prepared_root, tmp_path):
    out = tmp_path / "prepared" / "digits"
    shutil.copytree(ProjectPaths.at(prepared_root).prepared("digits"), out)
    return out


def test_corrupted_prepared_array_is_refused_naming_the_file(digits_copy, monkeypatch):
    ds = PreparedDataset(digits_copy)
    assert ds.check() == ds.manifest_sha256  # clean: passes, and names the data by its manifest hash
    size = (digits_copy / "image.npy").stat().st_size
    _xor64(digits_copy / "image.npy", size // 2)  # 64 XOR-ed bytes, size unchanged
    with pytest.raises(DataError) as err:
        PreparedDataset(digits_copy).check()
    msg = str(err.value)
    assert str(digits_copy / "image.npy") in msg and "sha256" in msg and "hashbench prepare digits" in msg


def test_corruption_is_found_even_with_the_mtime_put_back(digits_copy):
    PreparedDataset(digits_copy).check()
    path = digits_copy / "labels.npy"
    st = path.stat()
    _xor64(path, st.st_size - 64)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the ctime still changes: the cache misses
    with pytest.raises(DataError, match="labels.npy.*sha256"):
        PreparedDataset(digits_copy).check()


def test_truncated_array_is_refused_by_size_before_hashing(digits_copy, monkeypatch):
    path = digits_copy / "image.npy"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 1000)
    _forbid_hashing_arrays(monkeypatch, "hashed a file whose size is already wrong:")
    with pytest.raises(DataError) as err:
        PreparedDataset(digits_copy).check()
    assert str(path) in str(err.value) and "bytes" in str(err.value) and "truncated" in str(err.value)


def test_npy_header_must_match_the_manifest(digits_copy):
    """A well-formed .npy of the right byte count but another shape (say, from another prepare)."""
    arr = np.load(digits_copy / "labels.npy")
    np.save(digits_copy / "labels.npy", arr.reshape(arr.shape[1], arr.shape[0]))
    with pytest.raises(DataError, match=r"labels\.npy: array \(10, \d+\) uint8, the manifest says \(\d+, 10\) uint8"):
        PreparedDataset(digits_copy).verify()  # the full check runs the same structural checks


def _forbid_hashing_arrays(monkeypatch, why: str) -> None:
    """sha256_file fails the test for any file but the manifest (whose hash names the data)."""
    real = formats.sha256_file
    monkeypatch.setattr(formats, "sha256_file", lambda p: real(p) if p.name == formats.MANIFEST else pytest.fail(f"{why} {p}"))


def test_unchanged_files_are_not_hashed_again(digits_copy, monkeypatch):
    PreparedDataset(digits_copy).check()
    _forbid_hashing_arrays(monkeypatch, "rehashed unchanged")
    PreparedDataset(digits_copy).check()  # every digest from the cache beside the folder
    cache = json.loads((digits_copy.parent / ".digits.verified.json").read_text())
    assert set(cache["files"]) == set(PreparedDataset(digits_copy).manifest["checksums"])
    with pytest.raises(pytest.fail.Exception, match="rehashed"):
        PreparedDataset(digits_copy).verify()  # verify() without quick hashes everything


def test_write_prepared_seeds_the_cache(tmp_path, monkeypatch):
    out = _tiny_prepared(tmp_path / "ds")
    _forbid_hashing_arrays(monkeypatch, "rehashed")
    PreparedDataset(out).check()  # the first trial after prepare hashes nothing


def test_run_trial_refuses_corrupted_data(digits_copy, tmp_path, repo_params, one_torch_thread):
    spec = trial_spec(tmp_path, repo_params, "csq", 16, epochs=1)
    _xor64(digits_copy / "image.npy", 4096)
    with pytest.raises(DataError, match="image.npy"):
        run_trial(spec, digits_copy)


# -- item 4: refused archives and the checksum lock -------------------------------------------------


@pytest.fixture
def lock_file(monkeypatch, tmp_path):
    """A throw-away lock holding one unrelated entry (the committed lock is never touched)."""
    monkeypatch.setattr(dl, "SETTINGS", dl.DownloadSettings(backoff=0.01, connect_timeout=2.0, read_timeout=5.0, progress=False))
    path = tmp_path / "lock.json"
    path.write_text(json.dumps({"version": 1, "files": {"other/x.bin": {"sha256": "0" * 64, "size": 1, "url": None, "origin": "first-use"}}}))
    monkeypatch.setenv(dl.LOCK_ENV, str(path))
    return path


def _imagenette(out, seed=6):
    build_imagenette(out, "imagenette2-160", train_counts=[3] * 10, val_per_class=2, seed=seed)
    return out / "imagenette2-160.tgz"


def test_refused_archives_leave_the_lock_unchanged_and_the_good_one_is_accepted(tmp_path, lock_file):
    good = _imagenette(tmp_path / "good").read_bytes()
    www, raw = tmp_path / "www", tmp_path / "raw"
    www.mkdir()
    served = www / "imagenette2-160.tgz"
    corrupted = bytearray(good)
    for i in range(64):
        corrupted[len(good) // 2 + i] ^= 0xFF
    lock_before = lock_file.read_bytes()
    spec = get_dataset("imagenette")
    with RangeServer(www) as srv:
        params = spec.Params(variant="160", mirror=srv.url)
        for name, data in (("corrupted", bytes(corrupted)), ("truncated", good[: len(good) * 3 // 5])):
            served.write_bytes(data)
            with pytest.raises(DataError) as err:
                spec.fetch(params, raw)
            msg = str(err.value)
            assert "corrupt or truncated" in msg and "imagenette2-160.tgz" in msg and "not recorded" in msg, name
            assert lock_file.read_bytes() == lock_before, name  # the refused archive's hash was not trusted
            assert not (raw / "imagenette2-160.tgz").exists() and not (raw / "FETCH.json").exists(), name
            assert not (raw / "imagenette2-160").exists(), name  # nothing stamped complete
        assert sorted(p.name for p in raw.glob("*.bad*")) == ["imagenette2-160.tgz.bad", "imagenette2-160.tgz.bad.1"]
        served.write_bytes(good)
        spec.fetch(params, raw)  # accepted: not rejected as a mismatch against a poisoned entry
    sha = hashlib.sha256(good).hexdigest()
    entries = json.loads(lock_file.read_text())["files"]
    assert entries["imagenette/imagenette2-160.tgz"]["sha256"] == sha and "other/x.bin" in entries
    assert json.loads((raw / "FETCH.json").read_text())["files"] == {"imagenette2-160.tgz": sha}
    assert (raw / "imagenette2-160" / "noisy_imagenette.csv").is_file()
    spec.fetch(params, raw)  # verified against the lock now, no network (the server is gone)


def test_new_upstream_version_needs_retrust_on_purpose(tmp_path, lock_file, repo_params):
    www, root = tmp_path / "www", tmp_path / "project"
    _imagenette(www)
    spec = get_dataset("imagenette")
    raw = ProjectPaths.at(root).raw("imagenette")
    with RangeServer(www) as srv:
        spec.fetch(spec.Params(variant="160", mirror=srv.url), raw)
        first = json.loads(lock_file.read_text())["files"]["imagenette/imagenette2-160.tgz"]["sha256"]
        _imagenette(www, seed=7)  # the source publishes another archive under the same name
        (raw / "imagenette2-160.tgz").unlink()
        p = copy.deepcopy(repo_params)
        p["datasets"]["imagenette"] = {"variant": "160", "mirror": srv.url}
        params_file = write_params(tmp_path, p)
        argv = ["--params", str(params_file), "--root", str(root), "fetch", "imagenette"]
        assert cli.main(argv) == 2  # a mismatch against the lock: refused
        assert json.loads(lock_file.read_text())["files"]["imagenette/imagenette2-160.tgz"]["sha256"] == first
        with pytest.raises(dl.ChecksumMismatch, match="hashbench fetch imagenette --retrust"):
            spec.fetch(spec.Params(variant="160", mirror=srv.url), raw)
        assert cli.main(argv + ["--retrust"]) == 0
    entry = json.loads(lock_file.read_text())["files"]["imagenette/imagenette2-160.tgz"]
    assert entry["sha256"] == hashlib.sha256((www / "imagenette2-160.tgz").read_bytes()).hexdigest() != first
    assert "re-trusted" in entry["origin"]


# -- item 6: names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("section,name", [("suites", "demo/digits"), ("methods", "csq v2"), ("profiles", "../x"), ("suites", "-x")])
def test_unsafe_names_are_a_clear_error(tmp_path, repo_params, section, name):
    p = copy.deepcopy(repo_params)
    if section == "suites":
        p["suites"][name] = p["suites"].pop("demo-digits")
    elif section == "methods":
        p["methods"][name] = {"method": "csq"}
    else:
        p["profiles"][name] = {}
    with pytest.raises(ConfigError) as err:
        load_params(write_params(tmp_path, p))
    assert f"{section}.{name}: the name {name!r} is not allowed" in str(err.value) and "A-Z a-z 0-9 _ . -" in str(err.value)


def test_slash_in_suite_name_exits_2_with_one_line(tmp_path, repo_params, capsys):
    p = copy.deepcopy(repo_params)
    p["suites"]["demo/digits"] = p["suites"].pop("demo-digits")
    path = write_params(tmp_path, p)
    assert cli.main(["--params", str(path), "--root", str(tmp_path), "bench", "--suite", "demo/digits", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hashbench: error: ") and "suites.demo/digits" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_repository_names_are_safe():
    load_params(REPO / "params.yaml")  # every name in the shipped params passes


# -- item 8b: staging folders left by kill -9 -----------------------------------------------------------


def _tiny_prepared(out, version=0):
    labels = np.eye(2, dtype=np.uint8)[[0, 1, 0, 1]]
    split = Split(query=np.array([0]), train=np.array([1, 2, 3]), database=np.array([1, 2, 3]))
    return write_prepared(out, dataset="t", labels=labels, label_names=["a", "b"], multi_label=False,
                          modalities={"image": ModalityData("features", np.full((4, 3), version))},
                          splits={"standard": split}, sources={}, params={"version": version})


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


KILLED_PREPARE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    import numpy as np
    from pipeline.data.formats import ModalityData, write_prepared
    from pipeline.data.splits import Split
    real, calls = Path.rename, []
    def rename(self, target):
        calls.append(self)
        if len(calls) == 2:  # after the old version moved aside, before the new one moved in
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, target)
    Path.rename = rename
    split = Split(query=np.array([0]), train=np.array([1, 2, 3]), database=np.array([1, 2, 3]))
    write_prepared(Path({out!r}), dataset="t", labels=np.eye(2, dtype=np.uint8)[[0, 1, 0, 1]], label_names=["a", "b"],
                   multi_label=False, modalities={{"image": ModalityData("features", np.full((4, 3), 2))}},
                   splits={{"standard": split}}, sources={{}}, params={{"version": 2}})
""")


def test_kill_9_during_prepare_leaves_nothing_the_next_prepare_keeps(tmp_path):
    out = _tiny_prepared(tmp_path / "ds", version=1)
    code = KILLED_PREPARE.format(repo=str(REPO), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ds."))
    assert not out.exists() and {n.split("-")[0] for n in left} >= {".ds.old", ".ds.tmp"}  # the fault, reproduced
    assert remove_stale(out)  # what the next prepare does first
    assert json.loads((out / "manifest.json").read_text())["params"] == {"version": 1}  # the previous version, restored
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []
    _tiny_prepared(out, version=3)
    assert PreparedDataset(out).manifest["params"] == {"version": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.verified.json", "ds"]


def test_only_staging_of_dead_processes_on_this_host_is_removed(tmp_path):
    out = _tiny_prepared(tmp_path / "ds")
    dead, alive = _dead_pid(), os.getppid()
    this_host = staging_path(out, "tmp").name.rsplit("-", 1)[0]  # .ds.tmp-<host>
    ours_dead = [tmp_path / f"{this_host}-{dead}",
                 tmp_path / f".ds.old-{dead}",  # written before the host was part of the name
                 tmp_path / f".ds.image-pixels-{dead}.npy"]
    kept = [tmp_path / f".ds.tmp-{alive}",  # a live prepare of this host
            tmp_path / f".ds.tmp-otherhost-{dead}",  # another machine's, on a shared file system
            tmp_path / ".dsx.tmp-1", tmp_path / "notes.txt"]  # not staging siblings of ds
    for p in ours_dead + kept:
        if p.suffix in (".npy", ".txt"):
            p.write_bytes(b"x")
        else:
            (p / "splits").mkdir(parents=True)
    _tiny_prepared(out, version=1)  # the next prepare
    assert not any(p.exists() for p in ours_dead)
    assert all(p.exists() for p in kept)


def test_a_lock_poisoned_before_this_fix_is_recovered_with_retrust(tmp_path, lock_file):
    """The old code recorded a corrupt archive's hash; now its extraction is refused with the way out."""
    good = _imagenette(tmp_path / "good").read_bytes()
    corrupted = bytearray(good)
    for i in range(64):
        corrupted[len(good) // 2 + i] ^= 0xFF
    raw, www = tmp_path / "raw", tmp_path / "www"
    raw.mkdir()
    www.mkdir()
    (raw / "imagenette2-160.tgz").write_bytes(bytes(corrupted))
    dl.ChecksumLock(lock_file).record("imagenette", "imagenette2-160.tgz", sha256=hashlib.sha256(corrupted).hexdigest(),
                                      size=len(corrupted), url=None, warn=False)
    (www / "imagenette2-160.tgz").write_bytes(good)
    spec = get_dataset("imagenette")
    with RangeServer(www) as srv:
        params = spec.Params(variant="160", mirror=srv.url)
        with pytest.raises(DataError, match="entry itself is suspect.*--retrust"):
            spec.fetch(params, raw)
        (raw / "imagenette2-160.tgz").unlink()
        with dl.retrusting("imagenette"):
            spec.fetch(params, raw)
    assert json.loads(lock_file.read_text())["files"]["imagenette/imagenette2-160.tgz"]["sha256"] == hashlib.sha256(good).hexdigest()

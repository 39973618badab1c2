"""The one trial executor: run lifecycle (FINISHED / FAILED / KILLED), timings, artifacts, reaping of
runs whose process died; code-aware keys (pipeline.config.codehash); the per-suite lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.config import expand_suite, load_params
from pipeline.core.errors import HashBenchError
from pipeline.core.paths import ProjectPaths
from pipeline.protocols.standard import SuiteLock
from pipeline.train import tracking
from pipeline.train.executor import TAG_PID, TAG_STATUS, BodyResult, TrialContext, TrialStopped, execute_trial, headline, reap_dead_runs


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    exp = tracking.ensure_experiment(uri, "t", (tmp_path / "art").as_uri())
    return uri, exp


@pytest.fixture
def spec(repo_params, tmp_path):
    from conftest import write_params

    params = load_params(write_params(tmp_path, repo_params))
    return expand_suite(params, "demo-digits")[0]


def _ctx(store, tmp_path) -> TrialContext:
    uri, exp = store
    return TrialContext(tracking_uri=uri, experiment_id=exp, prepared_dir=tmp_path, provenance={"git.commit": "abc"})


def _run(store, run_id):
    return tracking.client(store[0]).get_run(run_id)


def test_finished_trial_logs_metrics_tags_artifacts_and_overhead(store, spec, tmp_path):
    seen = []

    def body(s, ctx, observer, out):
        observer.on_epoch(0, {"loss/joint/loss": 1.5})
        (out / "codes.npz").write_bytes(b"x")
        seen.append(s.key())
        return BodyResult(metrics={"i2i/map@all": 0.5}, inner_seconds=0.0, device="cpu", tags={"method.init": "default"})

    rec = execute_trial(spec, _ctx(store, tmp_path), body)
    run = _run(store, rec.run_id)
    assert seen == [spec.key()] and run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_KEY] == spec.key() and run.data.tags[TAG_STATUS] == "finished"
    assert run.data.tags["method.init"] == "default" and run.data.tags["git.commit"] == "abc" and run.data.tags["device"] == "cpu"
    assert run.data.tags["hashbench.eval_key"] == spec.eval_key()
    assert run.data.metrics["i2i/map_at_all"] == 0.5 and run.data.metrics["loss/joint/loss"] == 1.5
    assert run.data.metrics["overhead_seconds"] == pytest.approx(run.data.metrics["trial_wall_seconds"])  # inner 0: all overhead
    assert [a.path for a in tracking.client(store[0]).list_artifacts(rec.run_id)] == ["codes.npz"]
    assert tracking.finished_trials(*store) == {spec.key(): rec.run_id}
    assert headline(rec.metrics) == "mAP@all i2i 0.500"


@pytest.mark.parametrize(
    "exc, status, tag",
    [(ValueError("bad value"), "FAILED", "failed"), (KeyboardInterrupt(), "KILLED", "interrupted"), (SystemExit(1), "KILLED", "stopped"), (TrialStopped("asha"), "KILLED", "stopped")],
)
def test_unfinished_trial_is_closed_with_its_status(store, spec, tmp_path, exc, status, tag):
    def body(s, ctx, observer, out):
        raise exc

    with pytest.raises(type(exc)):
        execute_trial(spec, _ctx(store, tmp_path), body)
    (run,) = tracking.client(store[0]).search_runs([store[1]])
    assert run.info.status == status and run.data.tags[TAG_STATUS] == tag
    if status == "FAILED":
        assert run.data.tags["hashbench.error"] == "ValueError: bad value"
    assert tracking.finished_trials(*store) == {}


def test_runs_of_dead_processes_are_reaped_and_live_ones_kept(store, spec, tmp_path):
    uri, exp = store
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    import socket

    host = socket.gethostname()
    r_dead = tracking.start_trial_run(uri, exp, spec, {TAG_PID: dead, "hashbench.host": host})
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        r_live = tracking.start_trial_run(uri, exp, spec, {TAG_PID: str(live.pid), "hashbench.host": host})
        assert reap_dead_runs(uri, exp) == [r_dead]
        assert _run(store, r_dead).info.status == "KILLED" and _run(store, r_dead).data.tags[TAG_STATUS] == "lost"
        assert _run(store, r_live).info.status == "RUNNING"
    finally:
        live.kill()


def test_code_hash_ignores_docstrings_and_comments_but_not_code(tmp_path, monkeypatch):
    from pipeline.config import codehash

    pkg = tmp_path / "methods_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    mod = pkg / "m.py"
    monkeypatch.syspath_prepend(str(tmp_path))

    def digest(src: str) -> str:
        mod.write_text(textwrap.dedent(src))
        codehash._module_source.cache_clear()
        return codehash._module_source("methods_probe.m")[0]

    base = digest('"""Doc."""\ndef f(x):\n    """What f does."""\n    return x + 1\n')
    assert digest('"""Other doc."""\n# a comment\ndef f(x):\n    """Reworded."""\n\n    return x + 1  # why\n') == base
    assert digest('"""Doc."""\ndef f(x):\n    return x + 2\n') != base
    # every registered method has a code hash that covers its own module and the shared loop
    assert "pipeline.train.loop" in codehash.modules_of("csq") and "methods.csq" in codehash.modules_of("csq")
    assert "methods.dcmh" in codehash.modules_of("prdh")  # PRDH subclasses DCMH
    assert codehash.code_hash("csq") != codehash.code_hash("dcmh")


def test_a_second_bench_of_the_same_suite_is_refused(tmp_path):
    paths = ProjectPaths.at(tmp_path)
    with SuiteLock(paths, "demo-digits"):
        other = subprocess.run(
            [sys.executable, "-c", "from pipeline.core.paths import ProjectPaths; from pipeline.protocols.standard import SuiteLock\n"
             f"with SuiteLock(ProjectPaths.at({str(tmp_path)!r}), 'demo-digits'): pass"],
            capture_output=True, text=True,
        )
        assert other.returncode != 0 and "another bench of this suite is running" in other.stderr
        with pytest.raises(HashBenchError, match="another bench"):
            SuiteLock(paths, "demo-digits").__enter__()
    with SuiteLock(paths, "demo-digits"):  # released: free again
        pass

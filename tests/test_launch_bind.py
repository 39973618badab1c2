"""A local Ray started by a HashBench command listens on the loopback interface only, with token
authentication (issue 18, item 7; pipeline/protocols/launch.py:init_ray). Read from the listening TCP
sockets of the Ray processes (psutil), in a fresh interpreter: Ray reads the setting when imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = r"""
import json, os, sys
from pipeline.protocols import launch
assert "ray" not in sys.modules
launch.init_ray(None)
import psutil, ray
procs = {p.pid: p.name() for p in psutil.Process().children(recursive=True)}
listening = [(procs[c.pid], c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="tcp") if c.status == "LISTEN" and c.pid in procs]
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "auth": os.environ.get("RAY_AUTH_MODE"), "listening": listening}))
ray.shutdown()
"""


def _loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip.startswith("::ffff:127.") or ip == "::1"


@pytest.mark.e2e
def test_local_ray_listens_on_loopback_only_with_token_auth(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    names = {name for name, _, _ in got["listening"]}
    assert {"gcs_server", "raylet"} <= names, got  # the servers were found (the check could fail)
    assert got["gcs"].startswith("127.0.0.1:"), got
    assert not [s for s in got["listening"] if not _loopback(s[1])], got
    assert got["auth"] == "token"

"""Staging names beside a target path, and the removal of those left behind by killed processes.

Prepare and extraction build their output under a hidden sibling of the target and rename it into
place (see :func:`pipeline.data.formats.write_prepared`, :func:`pipeline.data.archives.extract_archive`),
so a ``kill -9`` never leaves a target that looks complete, but it does leave the sibling behind:
``.<target>.tmp-<host>-<pid>`` (the folder being built), ``.<target>.old-<host>-<pid>`` (the previous
version, between the two renames), ``.<target>.image-pixels-<host>-<pid>.npy`` (a decoded-pixel
scratch file, up to tens of GB for NUS-WIDE or COCO), ``.<target>.extract-<host>-<pid>``.

:func:`remove_stale` runs at the start of the next prepare or extraction of the same target and removes
those whose process is gone: only names of *this* host (a shared file system may hold another
machine's live staging folders) whose PID does not exist here. Names written before the host was part
of them (``.<target>.tmp-<pid>``) count as this host's. An ``.old`` folder whose target is missing
(the kill fell between the two renames) is the intact previous version: it is renamed back into place
instead of being deleted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "localhost"


def staging_path(target: Path, kind: str, suffix: str = "") -> Path:
    """The staging sibling ``.<target name>.<kind>-<host>-<pid><suffix>`` of ``target``."""
    target = Path(target)
    return target.with_name(f".{target.name}.{kind}-{_host()}-{os.getpid()}{suffix}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (a zombie or another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staging_siblings(target: Path) -> Iterable[tuple[Path, str, int]]:
    """(path, kind, pid) of every staging sibling of ``target`` written on this host."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?P<kind>[A-Za-z0-9_]+(?:-pixels)?)-(?:(?P<host>[A-Za-z0-9_.]+)-)?(?P<pid>\d+)(?:\.npy)?$")
    try:
        entries = list(target.parent.iterdir())
    except FileNotFoundError:
        return
    host = _host()
    for p in entries:
        m = pattern.match(p.name)
        if m and m["host"] in (None, host):
            yield p, m["kind"], int(m["pid"])


def remove_stale(target: Path, *, mine: Iterable[str] = ()) -> list[Path]:
    """Remove the staging siblings of ``target`` left by dead processes of this host; return them.

    ``mine``: kinds the caller is about to create itself, for which a sibling carrying the caller's
    own PID is also stale (a PID reused from a killed run, as in containers that number processes
    alike). A stale ``old`` folder whose target is missing is renamed back to ``target``.
    """
    target = Path(target)
    mine = set(mine)
    removed = []
    for path, kind, pid in sorted(_staging_siblings(target)):
        own = pid == os.getpid()
        if (own and kind not in mine) or (not own and pid_alive(pid)):
            continue
        if kind == "old" and not target.exists() and (path / "manifest.json").is_file():
            os.replace(path, target)
            log.warning("%s: restored the previous version from %s (a prepare was killed between its two renames)", target, path.name)
            continue
        log.warning("%s: removing %s, left by process %d which no longer runs", target.parent, path.name, pid)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed

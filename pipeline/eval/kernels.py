"""Loader of the optional compiled kernel of :mod:`pipeline.eval.metrics` (``pipeline/eval/_hamming_kernel.c``).

The C file is built as an optional extension at install time (``setup.py``; or in place with
``python setup.py build_ext --inplace``) and called through ctypes, which releases the GIL during each
call, so query blocks run in parallel threads. Backend choice: the environment variable
``HASHBENCH_METRICS_BACKEND`` = ``numpy`` | ``kernel`` | ``auto`` (default: the kernel when it was built
and loads, else numpy). Forcing ``kernel`` where it is missing raises an error instead of falling back.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os

from pipeline.core.errors import MetricsError

log = logging.getLogger("pipeline.eval.metrics")

BACKENDS = ("auto", "numpy", "kernel")
ENV_VAR = "HASHBENCH_METRICS_BACKEND"

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int


@functools.lru_cache(maxsize=1)
def load_kernel():
    """The ctypes library, or None when the extension was not built or does not load."""
    try:
        spec = importlib.util.find_spec("pipeline.eval._hamming_kernel")
    except (ImportError, ValueError):  # pragma: no cover
        spec = None
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
        if lib.hb_abi_version() != 3:  # pragma: no cover - stale build
            return None
    except (OSError, AttributeError):  # pragma: no cover
        return None
    lib.hb_hist.restype = None
    lib.hb_hist.argtypes = [_P, _P, _I64, _INT, _INT, _P, _P, _INT, _INT, _INT, _INT, _I64, _I64, _P, _P]
    lib.hb_rank.restype = _I64
    lib.hb_rank.argtypes = [_P, _P, _I64, _INT, _INT, _P, _P, _INT, _INT, _INT, _INT, _INT, _I64] + [_P] * 7
    return lib


def backend() -> str:
    """The backend in use ("kernel" or "numpy") from ``HASHBENCH_METRICS_BACKEND`` and availability."""
    want = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if want not in BACKENDS:
        raise MetricsError(f"{ENV_VAR}={want!r} is not one of {', '.join(BACKENDS)}")
    if want == "numpy":
        chosen = "numpy"
    elif load_kernel() is not None:
        chosen = "kernel"
    elif want == "kernel":
        raise MetricsError(
            f"{ENV_VAR}=kernel but the compiled kernel pipeline.eval._hamming_kernel is not built "
            "(reinstall with a C compiler, or run `python setup.py build_ext --inplace`)"
        )
    else:
        chosen = "numpy"
    _log_choice(chosen, want)
    return chosen


@functools.lru_cache(maxsize=None)
def _log_choice(chosen: str, want: str) -> None:
    if chosen == "kernel":
        log.info("retrieval metrics: compiled kernel (pipeline.eval._hamming_kernel) [%s=%s]", ENV_VAR, want)
    else:
        why = "forced" if want == "numpy" else "compiled kernel not built"
        log.info("retrieval metrics: numpy path (%s) [%s=%s]", why, ENV_VAR, want)

"""Optional compiled kernel of pipeline.eval.metrics; all other metadata lives in pyproject.toml.

The extension is optional: where no C compiler is available the build skips it and
pipeline.eval.metrics uses its numpy path (HASHBENCH_METRICS_BACKEND=numpy|kernel forces one)."""

import sys

from setuptools import Extension, setup

_ARGS = [] if sys.platform == "win32" else ["-O3"]

setup(
    ext_modules=[
        Extension(
            "pipeline.eval._hamming_kernel",
            sources=["pipeline/eval/_hamming_kernel.c"],
            extra_compile_args=_ARGS,
            optional=True,
        )
    ]
)

"""Where things live, relative to the project root (the folder holding params.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    @classmethod
    def at(cls, root: str | Path = ".") -> "ProjectPaths":
        return cls(Path(root).resolve())

    @property
    def embedded(self) -> Path:
        """Data committed to the repository (demo datasets)."""
        return self.root / "data" / "embedded"

    def raw(self, dataset: str) -> Path:
        return self.root / "data" / "raw" / dataset

    def prepared(self, dataset: str) -> Path:
        return self.root / "data" / "prepared" / dataset

    def bench_result(self, profile: str, suite: str) -> Path:
        return self.root / "results" / "bench" / profile / f"{suite}.json"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def ray_storage(self) -> Path:
        return self.root / ".hashbench" / "ray"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlruns.db"

    @property
    def logs(self) -> Path:
        """Log files of launches (Ray's driver-side messages): ``.hashbench/logs``."""
        return self.root / ".hashbench" / "logs"

    @property
    def checkpoints(self) -> Path:
        """In-trial checkpoints of unfinished trials, one folder per trial key: ``.hashbench/checkpoints``."""
        return self.root / ".hashbench" / "checkpoints"

    @property
    def locks(self) -> Path:
        """Per-suite lock files: ``.hashbench/locks``."""
        return self.root / ".hashbench" / "locks"

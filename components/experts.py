"""The experts the stacked categorizer pools: the one list that training, the stack stage, evaluate, serving and
publishing read (and that dvc.yaml and the retrain DAG are checked against, tests/unit/test_experts.py).

Adding an expert is an entry here plus its own training module and dvc.yaml stage. An expert whose file the
pipeline did not write (a baseline switched off in `train_baseline.modalities`, a catalog without metadata)
is simply absent: the stack stage goes without it. Only the fusion network is required (it also gives the
shared image/title space that search and drift use).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from components.config import Paths

if TYPE_CHECKING:  # the retrain DAG imports this module when it is parsed: numpy only where it is used
    import numpy as np


@dataclass(frozen=True)
class Expert:
    name: str
    display: str  # its row in the evaluation tables
    stage: str  # the DVC stage that trains it (also the retrain DAG's task)
    reads: tuple[str, ...]  # the inputs it reads (image, text, metadata); with none of them present it does not vote
    linear: bool = False  # a TF-IDF linear model in model.npz (plain arrays), else a neural checkpoint model.pt
    required: bool = False  # always loaded and always voting (it sees an empty input as such)

    def file(self, paths: Paths) -> Path:
        """Where the pipeline writes it."""
        if self.stage == "train_fusion":
            return Path(paths.train_fusion) / "model" / "model.pt"
        return Path(paths.train_baseline) / self.name / ("model.npz" if self.linear else "model.pt")

    def stage_files(self, paths: Paths) -> tuple[Path, Path]:
        """Its stage's metrics and timings files (the latter beside the DVC outputs, untracked)."""
        if self.stage == "train_fusion":
            return Path(paths.train_fusion) / "metrics.json", Path(paths.train_fusion) / "timings.json"
        base = Path(paths.train_baseline)
        return base / f"metrics_{self.name}.json", base / f"timings_{self.name}.json"


EXPERTS: tuple[Expert, ...] = (
    Expert("tfidf", "tfidf", "train_baseline@tfidf", ("text", "metadata"), linear=True),
    Expert("image", "image-only", "train_baseline@image", ("image",)),
    Expert("text", "text-only", "train_baseline@text", ("text",)),
    Expert("metadata", "metadata-only", "train_baseline@metadata", ("metadata",)),
    Expert("fusion", "fusion", "train_fusion", ("image", "text", "metadata"), required=True),
)
BY_NAME = {e.name: e for e in EXPERTS}
NAMES = tuple(BY_NAME)
BASELINES = tuple(e for e in EXPERTS if e.stage.startswith("train_baseline@"))  # trained by that stage
REQUIRED = tuple(e.name for e in EXPERTS if e.required)


def files(paths: Paths) -> dict[str, Path]:
    """Where the pipeline writes each expert (the stack stage keeps those that exist)."""
    return {e.name: e.file(paths) for e in EXPERTS}


def applies(name: str, present: dict[str, np.ndarray], rows: int) -> np.ndarray:
    """Which products an expert votes on: a required one on all, the others where any input they read is there.
    `present`: per input (image, text, metadata), a boolean array over the products."""
    import numpy as np

    e = BY_NAME[name]
    if e.required:
        return np.ones(rows, dtype=bool)
    return np.logical_or.reduce([present[m] for m in e.reads])

"""Params for one run: the retrain form's choices and hardware profiles as overrides of params.yaml.

A DAG run never writes them into the tracked params.yaml: they go into the run's own workspace
(components.orchestration.run_workspace). By hand, on a GPU machine's own clone, a profile can be made the default:

    python -m components.orchestration.run_params profile params.gpu.yaml   # merge a params profile into params.yaml
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from components.atomic_io import atomic_write_bytes
from components.config import deep_merge, load_raw, params_from_dict


def run_overrides(conf: dict) -> dict:
    """The retrain form (backbone, epochs) as a params.yaml override; empty values change nothing."""
    out: dict = {}
    if conf.get("backbone"):
        # Stage widths and the stem option belong to the default backbone: a chosen one runs as timm ships it.
        out = deep_merge(out, {"model": {"backbone": str(conf["backbone"]), "backbone_channels": [],
                                         "low_res_stem": False, "stem_width": 0}})
    if int(conf.get("epochs") or 0) > 0:
        epochs = {"train": {"epochs": int(conf["epochs"])}}
        out = deep_merge(out, {"train_baseline": epochs, "train_fusion": epochs})
    return out


GPU_PROFILE = "params.gpu.yaml"


def device_profile(home: Path) -> dict:
    """params.gpu.yaml when this machine sees a CUDA device, else nothing: asked on the worker that will train."""
    from components.models.runtime import select_device  # torch: imported only by the task that asks

    path = Path(home) / GPU_PROFILE
    return load_raw(path) if path.is_file() and select_device("auto").type == "cuda" else {}


def run_params(home: Path, conf: dict) -> dict:
    """A retrain run's overrides: the device profile, then the form's choices over it."""
    return deep_merge(device_profile(home), run_overrides(conf))


def apply_overrides(home: Path, overrides: dict) -> dict:
    """Merge overrides into home/params.yaml after checking the result against the schema."""
    if not overrides:
        return {}
    path = Path(home) / "params.yaml"
    merged = deep_merge(load_raw(path), overrides)
    params_from_dict(merged)  # raises ConfigError naming the bad key before anything is written
    atomic_write_bytes(path, yaml.safe_dump(merged, sort_keys=False).encode())
    return overrides


def main() -> None:
    """python -m components.orchestration.run_params profile params.gpu.yaml  (merge a profile into params.yaml)"""
    if len(sys.argv) != 3 or sys.argv[1] != "profile":
        raise SystemExit("usage: python -m components.orchestration.run_params profile PROFILE.yaml")
    changed = apply_overrides(Path.cwd(), load_raw(sys.argv[2]))
    print(f"params.yaml updated with {sys.argv[2]}: {sorted(changed)}")


if __name__ == "__main__":
    main()

"""One neural training as a stage step: build, fit, checkpoint. Used by both training stages.

It writes only the stage's files (checkpoint with its per-epoch history, deterministic metrics); MLflow
publishing is a separate step (`components.lifecycle.publish`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from components.catalog import level_key
from components.checkpoint import save_checkpoint
from components.config import ModelParams, TrainParams, params_to_dict
from components.data import Arrays
from components.encoders import Encoders
from components.models.fusion import ModelConfig, build_model
from components.models.runtime import cpu_bf16_native, predict_arrays, select_device
from components.training.loop import eval_precision, fit, macro_f1, seed_everything

log = logging.getLogger(__name__)

def val_scores(probs: list, labels, levels: tuple[str, ...]) -> dict[str, float]:
    scores = {}
    for lvl, name in enumerate(map(level_key, levels)):
        y, p = labels[:, lvl], probs[lvl]
        scores[f"val_{name}_accuracy"] = float((p.argmax(1) == y).mean())
        scores[f"val_{name}_macro_f1"] = macro_f1(y, p)
    return scores


def train_neural(model_params: ModelParams, seed: int, enc: Encoders, splits: dict[str, Arrays],
                 modalities: tuple[str, ...], tp: TrainParams, out_dir: Path,
                 init_state: dict[str, torch.Tensor] | None = None, finetune_image: str = "all"
                 ) -> tuple[dict, dict]:
    """Train on splits['train'], early-stop on splits['val']; write out_dir/model.pt.

    Returns (metrics, timings): metrics are a function of code, data and params (a DVC output);
    timings vary from run to run and belong in logs and MLflow, never in a DVC output.
    """
    cfg = ModelConfig.from_params(model_params, modalities, **enc.model_sizes())
    # Seeded before the towers are built: their random initialisation is part of the run (fit seeds the
    # shuffling again, but by then the weights would already differ from one process to the next).
    seed_everything(seed)
    model = build_model(cfg, model_params.pretrained_path if "image" in modalities else "")
    if init_state:
        missing, unexpected = model.load_state_dict(init_state, strict=False)
        log.info("initialised %d tensors from a trained tower (%d left as initialised)",
                 len(init_state) - len(unexpected), len(missing))
    if finetune_image != "all":
        model.towers["image"].freeze_backbone(keep_last_stage=finetune_image == "last_stage")
    device = select_device(tp.device)
    result = fit(model, splits["train"], splits["val"], tp, seed)
    val = splits["val"]
    metrics = {
        **val_scores(predict_arrays(model, val, tp.batch_size * 2, device,
                                    cpu_precision=eval_precision(tp))["probs"], val.labels, enc.levels),
        "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    timings = {"train_seconds": round(result.seconds, 1), "train_products_per_s": round(result.train_products_per_s, 1),
               "peak_rss_mib": round(result.peak_rss_mib, 1), "device": device.type,
               "cpu_precision": eval_precision(tp), "cpu_bf16_native": cpu_bf16_native()[1],
               "epoch_seconds": [round(s, 1) for s in result.epoch_seconds]}
    h, w = splits["train"].images.shape[1:3]
    save_checkpoint(out_dir / "model.pt", model.cpu(), enc, {
        "modalities": list(modalities), "image_size": [int(h), int(w)], "history": result.history,
        "val_metrics": metrics, "seed": seed,
        "params": {"model": params_to_dict(model_params), "train": params_to_dict(tp)},
    })
    log.info("%s: %s; %s", ",".join(modalities), metrics, timings)
    return metrics, timings

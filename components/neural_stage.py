"""One neural training as a stage step: build, fit, checkpoint, log to MLflow. Used by both trainings."""
from __future__ import annotations

import logging
import platform
from pathlib import Path

import pandas as pd
import torch

from components import tracking
from components.checkpoint import save_checkpoint
from components.config import Params, TrainParams, params_to_dict
from components.data import Arrays
from components.features import Encoders
from components.models.fusion import FusionModel, ModelConfig, build_model
from components.training import fit, macro_f1, predict_arrays, seed_everything, select_device

log = logging.getLogger(__name__)


def model_config(params: Params, enc: Encoders, modalities: tuple[str, ...]) -> ModelConfig:
    m = params.model
    return ModelConfig(
        modalities=modalities, backbone=m.backbone, embed_dim=m.embed_dim, text_dim=m.text_dim,
        text_channels=m.text_channels, text_kernels=m.text_kernels, meta_dim=m.meta_dim, dropout=m.dropout,
        vocab_size=len(enc.vocab) + 2, subword_buckets=enc.subword_buckets, attr_vocab_size=len(enc.attr_vocab) + 2,
        cardinalities=tuple(len(v) + 1 for v in enc.categorical.values()),
        n_numeric=2 * len(enc.numeric), n_classes=tuple(len(enc.labels[lvl]) for lvl in enc.labels),
        wide=m.wide, low_res_stem=m.low_res_stem, backbone_channels=m.backbone_channels,
        text_pretrained=enc.text_pretrained,
    )


def val_scores(model: FusionModel, val: Arrays, tp: TrainParams) -> dict[str, float]:
    out = predict_arrays(model, val, tp.batch_size * 2, select_device(tp.device))
    scores = {}
    for lvl, name in enumerate(("master", "sub", "article")):
        y, p = val.labels[:, lvl], out["probs"][lvl]
        scores[f"val_{name}_accuracy"] = float((p.argmax(1) == y).mean())
        scores[f"val_{name}_macro_f1"] = macro_f1(y, p)
    return scores


def train_neural(params: Params, enc: Encoders, splits: dict[str, Arrays], modalities: tuple[str, ...],
                 tp: TrainParams, out_dir: Path, run_name: str, example: pd.DataFrame,
                 init_state: dict[str, torch.Tensor] | None = None, finetune_image: str = "all") -> dict:
    """Train one model on splits['train'], early-stop on splits['val']; write model.pt + metrics."""
    cfg = model_config(params, enc, modalities)
    # Seeded before the towers are built: their random initialisation is part of the run (fit seeds the
    # shuffling again, but by then the weights would already differ from one process to the next).
    seed_everything(params.seed)
    model = build_model(cfg, params.model.pretrained_path if "image" in modalities else "")
    if init_state:
        missing, unexpected = model.load_state_dict(init_state, strict=False)
        log.info("initialised %d tensors from a trained tower (%d left as initialised)",
                 len(init_state) - len(unexpected), len(missing))
    if finetune_image != "all":
        model.towers["image"].freeze_backbone(keep_last_stage=finetune_image == "last_stage")
    device = select_device(tp.device)
    tags = {"stage": run_name.split("/")[0], "modalities": ",".join(modalities), "device": device.type,
            "host": platform.node()}
    with tracking.training_run(params, run_name, tags) as run:
        run.log_params({"model": params_to_dict(params.model), "train": params_to_dict(tp),
                        "modalities": ",".join(modalities), "seed": params.seed})
        result = fit(model, splits["train"], splits["val"], tp, params.seed,
                     on_epoch=lambda row: run.log_metrics(row, step=int(row["epoch"])))
        metrics = {
            **val_scores(model, splits["val"], tp),
            "best_epoch": result.best_epoch, "epochs_run": len(result.history),
            "train_seconds": round(result.seconds, 1),
            "train_products_per_s": round(result.train_products_per_s, 1),
            "peak_rss_mib": round(result.peak_rss_mib, 1),
            "parameters": int(sum(p.numel() for p in model.parameters())),
        }
        ckpt = out_dir / "model.pt"
        h, w = splits["train"].images.shape[1:3]
        save_checkpoint(ckpt, model.cpu(), enc, {
            "modalities": list(modalities), "image_size": [int(h), int(w)], "history": result.history,
            "val_metrics": metrics, "run_id": run.run_id, "seed": params.seed,
            "data_md5": data_md5(), "params": {"model": params_to_dict(params.model),
                                                "train": params_to_dict(tp)},
        })
        run.log_metrics(metrics)
        run.log_artifact(ckpt)
        metrics["model_uri"] = run.log_pyfunc(ckpt, example)
        metrics["run_id"] = run.run_id
    log.info("%s: %s", run_name, {k: v for k, v in metrics.items() if isinstance(v, float)})
    return metrics


def data_md5(dvc_file: str = "data.dvc") -> str:
    """The DVC md5 of the catalog version (traceability); '' outside the project root."""
    p = Path(dvc_file)
    if not p.is_file():
        return ""
    import yaml

    outs = yaml.safe_load(p.read_text()).get("outs", [{}])
    return str(outs[0].get("md5", ""))


"""Running a model: device choice, mixed precision and batched prediction (shared by training and serving).

Mixed precision: float16 autocast (+ gradient scaling in the loop) on CUDA; bfloat16 autocast on a CPU
that computes bf16 natively (AVX-512 BF16 or AMX: oneDNN runs the convolutions and matmuls ~1.8x faster),
fp32 on any other CPU, where bf16 would be emulated and slower. Losses, softmax, temperatures and metrics
always run in fp32 (the callers cast the features back before them).
Training takes its choice from params (`train.cpu_precision`); serving has no params, so a worker's `auto`
can be forced by the environment: DEEPFUSION_CPU_PRECISION=bf16|fp32 (how the tests run the bf16 path on
CPUs without it, and how an operator pins one precision across a fleet of mixed CPUs).
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import numpy as np
import torch

from components.data import Arrays, iterate
from components.models.fusion import FusionModel

PREDICT_BATCH = 256  # rows per forward pass at inference; memory, not accuracy, sets it
CPU_PRECISIONS = ("auto", "bf16", "fp32")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic
PRECISION_ENV = "DEEPFUSION_CPU_PRECISION"  # forces what `auto` means on this machine


def select_device(preference: str) -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(preference)


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


@functools.cache
def cpu_bf16_native() -> tuple[bool, str]:
    """(whether this CPU computes bf16 natively, the evidence): oneDNN's own check and the CPU flags."""
    flags = sorted(f for f in BF16_CPU_FLAGS if f in cpu_flags())
    try:
        onednn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        onednn = False
    found = ", ".join(flags) or f"none of {', '.join(BF16_CPU_FLAGS)}"
    return onednn and bool(flags), f"oneDNN bf16 {'yes' if onednn else 'no'}, CPU flags {found}"


def cpu_dtype(precision: str = "auto") -> torch.dtype:
    """The autocast dtype on CPU: `auto` = bf16 where native, else fp32 (unless DEEPFUSION_CPU_PRECISION says
    otherwise); `bf16`/`fp32` force it."""
    if precision not in CPU_PRECISIONS:
        raise ValueError(f"cpu precision {precision!r} is not one of {CPU_PRECISIONS}")
    if precision == "auto":
        forced = os.environ.get(PRECISION_ENV, "auto") or "auto"
        if forced not in CPU_PRECISIONS:
            raise ValueError(f"{PRECISION_ENV}={forced!r} is not one of {CPU_PRECISIONS}; unset it or pick one")
        if forced != "auto":
            return cpu_dtype(forced)
        return torch.bfloat16 if cpu_bf16_native()[0] else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def inference_precision(device: torch.device) -> str:
    """What `autocast(device)` computes in, as a name: part of the identity of anything derived from outputs."""
    if device.type == "cuda":
        return "cuda-fp16"
    return f"{device.type}-{'bf16' if cpu_dtype() == torch.bfloat16 else 'fp32'}"


def autocast(device: torch.device, enabled: bool = True, cpu_precision: str = "auto"
             ) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA; bfloat16 on a CPU that has it natively (see cpu_dtype); else fp32."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16, enabled=enabled)
    dtype = cpu_dtype(cpu_precision)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled and dtype == torch.bfloat16)


def fp32(feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating features back to fp32: what comes after the towers (heads' softmax, losses) stays exact."""
    return {k: v.float() if v.is_floating_point() else v for k, v in feats.items()}


def predict_arrays(model: FusionModel, a: Arrays, batch_size: int, device: torch.device,
                   present: tuple[bool, bool, bool] | None = None, embeddings: bool = False,
                   cpu_precision: str = "auto") -> dict:
    """Fused class probabilities per level (and optionally embeddings) for every row of `a`."""
    return predict_many({"model": model}, a, batch_size, device, present, ("model",) if embeddings else (),
                        cpu_precision)["model"]


def prepare_for_inference(model: FusionModel) -> FusionModel:
    """A loaded model made faster to serve: evaluation mode, BatchNorm folded into the image convolutions.
    It cannot train afterwards (the image tower refuses); load the checkpoint again for that."""
    model.eval()
    if "image" in model.towers:
        model.towers["image"].fold_batchnorm()
    return model


# Id columns where 0 is padding. Every reader ignores it: the text CNN's max-pool masks it, and the embedding
# bags skip it (padding_idx) or weigh it 0 (the wide head), so cutting all-padding columns changes no output.
PADDED = ("tokens", "subwords", "attrs")


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without the trailing columns of PADDED that are padding in every row (one column is kept).

    Inference only: a title has ~6 of its 24 token slots and ~120 of its 256 n-gram slots filled, and the text
    CNN and the bags cost per slot, padding included (~7 % of a stacked prediction on CPU). The outputs are the
    same (bit-identical on the served stack's 3,000 test products; `tests/unit/test_models.py`). Training steps
    keep the full widths: their gradients' summation order, hence the trained weights, stay as they were.
    """
    out = dict(batch)
    for key in PADDED:
        ids = batch.get(key)
        if ids is None or ids.ndim != 2 or not ids.shape[1]:
            continue
        used = ids.ne(0).any(0).nonzero()
        width = int(used.max()) + 1 if len(used) else 1
        if width < ids.shape[1]:
            out[key] = ids[:, :width].contiguous()
    return out


@torch.no_grad()
def predict_many(models: dict[str, FusionModel], a: Arrays, batch_size: int, device: torch.device,
                 present: tuple[bool, bool, bool] | None = None, embeddings: tuple[str, ...] = (),
                 cpu_precision: str = "auto") -> dict[str, dict]:
    """`predict_arrays` for several models over the same rows, batch by batch.

    Image towers with the same frozen trunk (the fusion network keeps the image baseline's stages but the
    last one) compute it once per batch: the trunk is ~3/4 of a ResNet's FLOPs, the bulk of serving time.
    `embeddings`: the models whose embeddings are wanted too.
    """
    for model in models.values():
        model.eval()
    keys = {name: m.towers["image"].trunk_key() if "image" in m.towers and len(models) > 1 else None
            for name, m in models.items()}
    shared = {k for k in keys.values() if k is not None and list(keys.values()).count(k) > 1}
    probs: dict[str, list[list[np.ndarray]]] = {name: [[] for _ in m.cfg.n_classes] for name, m in models.items()}
    embs: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in embeddings}
    for batch in map(trim_padding, iterate(a, batch_size, device)):
        if present is not None:
            batch["present"] = torch.tensor(present, device=device).expand(len(batch["tokens"]), 3)
        trunks: dict[str, torch.Tensor] = {}
        for name, model in models.items():
            with autocast(device, cpu_precision=cpu_precision):
                key, b = keys[name], batch
                if key in shared:
                    if key not in trunks:
                        trunks[key] = model.towers["image"].trunk(batch["image"])
                    b = {**batch, "image_trunk": trunks[key]}
                feats = fp32(model.forward_features(b))
            for lvl, lg in enumerate(model.fused_logits(feats)):
                probs[name][lvl].append(torch.softmax(lg, 1).cpu().numpy())
            if name in embs:
                for k in (*model.cfg.modalities, "fused"):
                    embs[name].setdefault(k, []).append(feats[k].cpu().numpy())
    out = {name: {"probs": [np.concatenate(p) if p else np.zeros((0, n)) for p, n in
                            zip(probs[name], models[name].cfg.n_classes)]} for name in models}
    for name, e in embs.items():
        out[name]["embeddings"] = {k: np.concatenate(v) for k, v in e.items()}
    return out

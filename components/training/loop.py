"""The training loop shared by the neural baselines and the fusion model.

Device selection (CUDA + mixed precision on GPU workers, CPU otherwise), seeded shuffling, modality
dropout, early stopping on validation articleType macro-F1, and a progress bar.
"""
from __future__ import annotations

import copy
import logging
import random
import resource
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import f1_score
from tqdm import tqdm

from components.catalog import FINEST
from components.config import TrainParams, level_weights
from components.data import Arrays, augment_images, iterate
from components.models.fusion import MODALITIES, FusionModel
from components.models.losses import total_loss
from components.models.runtime import autocast, fp32, predict_arrays, select_device

log = logging.getLogger(__name__)

ONE_CYCLE_WARMUP = 0.15  # share of the steps the one-cycle LR spends rising to its peak
CLIP_NORM = 5.0  # dense gradients only; sparse rows are few per step and Adam bounds them


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def modality_dropout(batch_size: int, p: float, gen: torch.Generator, active: tuple[str, ...]) -> torch.Tensor:
    """(B, 3) bool: which modalities a row keeps; at least one active modality always stays."""
    keep = torch.rand(batch_size, 3, generator=gen) >= p
    act = torch.tensor([m in active for m in MODALITIES])
    keep &= act
    none = ~keep.any(1)
    if none.any():
        first = int(act.nonzero()[0])
        # Prefer text when it is active: it is the modality every product listing has.
        fallback = MODALITIES.index("text") if "text" in active else first
        keep[none, fallback] = True
    return keep | ~act  # inactive modalities are ignored by the model anyway


def eval_precision(tp: TrainParams) -> str:
    """The CPU precision a training validates in: its own (train.amp off means fp32 everywhere)."""
    return tp.cpu_precision if tp.amp else "fp32"


def macro_f1(y_true: np.ndarray, probs: np.ndarray) -> float:
    valid = y_true >= 0
    return float(f1_score(y_true[valid], probs[valid].argmax(1), average="macro"))


@dataclass
class FitResult:
    best_state: dict
    best_epoch: int
    best_val_macro_f1: float
    history: list[dict] = field(default_factory=list)  # per epoch: validation and loss figures only
    epoch_seconds: list[float] = field(default_factory=list)  # wall time varies run to run: kept apart
    seconds: float = 0.0
    train_products_per_s: float = 0.0
    peak_rss_mib: float = 0.0


def _is_sparse(model: FusionModel, param: torch.Tensor) -> bool:
    return any(param is m.weight for m in model.modules()
               if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.sparse)


def optimizers(model: FusionModel, lr: float, weight_decay: float, sparse_lr_scale: float = 1.0
               ) -> list[torch.optim.Optimizer]:
    """AdamW for the dense weights; lazy (sparse) Adam for the hashed n-gram tables.

    A batch touches a few thousand of the tables' ~130k rows: dense gradients and AdamW would rewrite
    every row each step (~35M floats), which made CPU training several times slower than updating only the
    rows a batch touches. A row moves only in the steps whose batch holds its n-gram, so the tables take
    `sparse_lr_scale` times the dense learning rate (at 1x, those of rare classes learned too slowly:
    text-only validation macro-F1 0.949, against 0.972 at 10x).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]  # a frozen image backbone is skipped
    sparse = [p for p in trainable if _is_sparse(model, p)]
    dense = [p for p in trainable if not _is_sparse(model, p)]
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(dense, lr=lr, weight_decay=weight_decay)]
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=lr * sparse_lr_scale))
    return opts


class Trainer:
    """One optimisation step as training runs it (augmentation, modality dropout, autocast, clipping,
    sparse + dense optimisers, one-cycle schedule); `fit` loops it, the benchmark times it."""

    def __init__(self, model: FusionModel, tp: TrainParams, steps: int, seed: int, device: torch.device) -> None:
        self.model, self.tp, self.device = model, tp, device
        self.opts = optimizers(model, tp.lr, tp.weight_decay, tp.sparse_lr_scale)
        self.scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=o.defaults["lr"], total_steps=steps,
                                                           pct_start=ONE_CYCLE_WARMUP) for o in self.opts]
        self.dense = [p for p in model.parameters() if p.requires_grad and not _is_sparse(model, p)]
        self.scaler = torch.amp.GradScaler("cuda", enabled=tp.amp and device.type == "cuda")
        self.gen = torch.Generator().manual_seed(seed)

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        model, tp, device = self.model, self.tp, self.device
        if tp.augment and "image" in model.towers:
            batch["image"] = augment_images(batch["image"].cpu(), self.gen, tp.scale_jitter,
                                            tp.erase_prob).to(device)
        if tp.modality_dropout > 0:
            batch["present"] = modality_dropout(len(batch["tokens"]), tp.modality_dropout, self.gen,
                                                model.cfg.modalities).to(device)
        with autocast(device, tp.amp, tp.cpu_precision):
            feats = model.forward_features(batch)
        loss, parts = total_loss(model, fp32(feats), batch, tp.losses,
                                 level_weights(tp.level_weights, len(model.cfg.n_classes)))
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for opt in self.opts:
            self.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(self.dense, CLIP_NORM)
        for opt, sched in zip(self.opts, self.scheds):
            self.scaler.step(opt)
            sched.step()
        self.scaler.update()
        return loss, parts


def fit(model: FusionModel, train: Arrays, val: Arrays, tp: TrainParams, seed: int) -> FitResult:
    device = select_device(tp.device)
    if tp.num_threads:
        torch.set_num_threads(tp.num_threads)
    seed_everything(seed)
    model.to(device)
    steps_per_epoch = -(-len(train) // tp.batch_size)
    if tp.max_batches_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tp.max_batches_per_epoch)
    trainer = Trainer(model, tp, tp.epochs * steps_per_epoch, seed, device)
    rng = np.random.default_rng(seed)
    best = FitResult(copy.deepcopy(model.state_dict()), 0, -1.0)
    bad_epochs, seen, t0 = 0, 0, time.perf_counter()
    train_seconds = 0.0
    for epoch in range(1, tp.epochs + 1):
        model.train()
        t_epoch, sums, n = time.perf_counter(), {}, 0
        bar = tqdm(iterate(train, tp.batch_size, device, True, rng, tp.max_batches_per_epoch),
                   total=steps_per_epoch, desc=f"epoch {epoch}/{tp.epochs}", mininterval=10, leave=False)
        for batch in bar:
            loss, parts = trainer.step(batch)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            seen += len(batch["tokens"])
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        train_seconds += time.perf_counter() - t_epoch
        out = predict_arrays(model, val, tp.batch_size * 2, device, cpu_precision=eval_precision(tp))
        val_f1 = macro_f1(val.labels[:, FINEST], out["probs"][FINEST])
        val_acc = float((out["probs"][FINEST].argmax(1) == val.labels[:, FINEST]).mean())
        row = {"epoch": epoch, "val_macro_f1": val_f1, "val_accuracy": val_acc,
               **{f"train_{k}": v / max(n, 1) for k, v in sums.items()}}
        best.history.append(row)
        best.epoch_seconds.append(time.perf_counter() - t_epoch)
        log.info("epoch %d (%.0f s): %s", epoch, best.epoch_seconds[-1], {k: round(v, 4) for k, v in row.items()})
        if val_f1 > best.best_val_macro_f1:
            best.best_state = copy.deepcopy(model.state_dict())
            best.best_epoch, best.best_val_macro_f1, bad_epochs = epoch, val_f1, 0
        else:
            bad_epochs += 1
            if bad_epochs >= tp.patience and epoch >= tp.min_epochs:
                log.info("early stop after epoch %d (best %d)", epoch, best.best_epoch)
                break
    model.load_state_dict(best.best_state)
    best.seconds = time.perf_counter() - t0
    best.train_products_per_s = seen / max(train_seconds, 1e-9)
    best.peak_rss_mib = peak_rss_mib()
    return best

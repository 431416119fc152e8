"""Stage train_retrieval: the fusion network's photo and title towers, fine-tuned for retrieval
-> artifacts/train_retrieval/towers.pt.

Trains the retrieval towers (components/models/retrieval.py) on the train split's (photo, title) pairs and keeps
the epoch whose validation retrieval (mean of title->image and image->title R@10 among the val products) is best;
the untrained towers, which are the fusion space itself, are the first candidate, so the stage never makes search
worse on validation. The fusion network is read, never changed: the categorizer's predictions stay as they are.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components import metrics as M
from components.atomic_io import write_json
from components.checkpoint import fusion_checkpoint, load_checkpoint
from components.config import Params, TrainRetrievalParams, load_params
from components.data import SPLIT_CODES, Arrays, load_arrays
from components.models.fusion import FusionModel
from components.models.retrieval import (
    Memory,
    RetrievalTowers,
    class_block_order,
    info_nce,
    save_towers,
    space_fingerprint,
    towers_file,
)
from components.models.runtime import PREDICT_BATCH, select_device
from components.training.loop import optimizers

log = logging.getLogger(__name__)

KS = (1, 10)


def pair_rows(arrays: Arrays, split: np.ndarray, code: int) -> np.ndarray:
    """Rows of one split with both a photo and a title: the pairs retrieval learns and is measured on."""
    return np.flatnonzero((split == code) & arrays.has_image.astype(bool) & (arrays.tokens != 0).any(1))


@torch.no_grad()
def trunks(towers: RetrievalTowers, images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The frozen photo-tower outputs of every image, once (the last stage learns on top of them)."""
    towers.eval()
    out = [towers.trunk(torch.from_numpy(np.ascontiguousarray(images[i:i + PREDICT_BATCH])).to(device)).cpu()
           for i in range(0, len(images), PREDICT_BATCH)]
    return torch.cat(out)


@torch.no_grad()
def embed(towers: RetrievalTowers, trunk: torch.Tensor, tokens: torch.Tensor, subwords: torch.Tensor,
          device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    towers.eval()
    img, txt = [], []
    for i in range(0, len(trunk), PREDICT_BATCH):
        img.append(towers.embed_image(None, trunk[i:i + PREDICT_BATCH].to(device)).cpu().numpy())
        txt.append(towers.embed_text(tokens[i:i + PREDICT_BATCH].to(device),
                                     subwords[i:i + PREDICT_BATCH].to(device)).cpu().numpy())
    return np.concatenate(img), np.concatenate(txt)


def scores(image: np.ndarray, text: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    """Title -> image and image -> title R@1/R@10/MRR among the given products; `score` = their mean R@10."""
    t2i, i2t = M.retrieval(text, image, relevant, KS), M.retrieval(image, text, relevant, KS)
    out = {**{f"text_to_image_{k}": round(v, 4) for k, v in t2i.items()},
           **{f"image_to_text_{k}": round(v, 4) for k, v in i2t.items()}}
    out["score"] = round((t2i["recall_at_10"] + i2t["recall_at_10"]) / 2, 4)
    return out


def train_towers(fusion: FusionModel, train: Arrays, val: Arrays, val_relevant: np.ndarray,
                 p: TrainRetrievalParams, seed: int, device: torch.device) -> tuple[RetrievalTowers, dict]:
    """The towers of the best validation epoch (epoch 0 = the fusion network's own) and the history.

    train, val: the (photo, title) pairs; a train row's `group` (repeated listings are positives of each other)
    and finest label (same-class blocks = hard negatives) come with it."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    towers = RetrievalTowers(fusion, space_fingerprint(fusion)).to(device)
    towers.prepare_training()
    # The title tower's n-gram table takes sparse gradients: lazy Adam for it, AdamW for the rest (as in training).
    opts = optimizers(towers, p.lr, p.weight_decay)
    memory = Memory(p.memory, fusion.cfg.embed_dim)
    tr_trunk, va_trunk = trunks(towers, train.images, device), trunks(towers, val.images, device)
    tokens, subwords = torch.from_numpy(train.tokens), torch.from_numpy(train.subwords)
    va_tokens, va_subwords = torch.from_numpy(val.tokens), torch.from_numpy(val.subwords)
    group, labels = torch.from_numpy(train.group.astype(np.int64)), train.labels[:, -1]
    best = scores(*embed(towers, va_trunk, va_tokens, va_subwords, device), val_relevant)
    history = [{"epoch": 0, **best}]
    best_state, best_epoch, stale = copy.deepcopy(towers.state_dict()), 0, 0
    for epoch in range(1, p.epochs + 1):
        towers.train()
        order, losses = class_block_order(labels, p.class_block, rng), []
        for start in range(0, len(order), p.batch_size):
            idx = torch.from_numpy(order[start:start + p.batch_size])
            if len(idx) < 2:
                continue
            img = towers.embed_image(None, tr_trunk[idx].to(device))
            txt = towers.embed_text(tokens[idx].to(device), subwords[idx].to(device))
            loss = info_nce(img, txt, group[idx].to(device), towers.logit_scale, memory)
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
            memory.push(img, txt, group[idx])
            losses.append(float(loss.detach()))
        row = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4),
               **scores(*embed(towers, va_trunk, va_tokens, va_subwords, device), val_relevant),
               "temperature": round(float(1 / towers.logit_scale.detach().exp().clamp(max=100.0)), 4)}
        history.append(row)
        log.info("train_retrieval epoch %d: %s", epoch, row)
        if row["score"] > best["score"]:
            best, best_state, best_epoch, stale = row, copy.deepcopy(towers.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= p.patience:
                break
    towers.load_state_dict(best_state)
    return towers.cpu().eval(), {"best_epoch": best_epoch, "val": {"fusion_space": history[0], "retrieval": best},
                                 "history": history}


def run(params: Params) -> dict:
    p, started = params.train_retrieval, time.perf_counter()
    device = select_device(p.device)
    fusion, _, _ = load_checkpoint(fusion_checkpoint(params.paths.train_fusion), device)
    arrays, split = load_arrays(params.paths.ingest, params.paths.features)
    train, val = pair_rows(arrays, split, SPLIT_CODES["train"]), pair_rows(arrays, split, SPLIT_CODES["val"])
    frame = pd.read_parquet(Path(params.paths.ingest) / "products.parquet", columns=["title_norm", "image_md5"])
    relevant = M.relevance(frame["title_norm"].to_numpy()[val], frame["image_md5"].to_numpy()[val])
    towers, result = train_towers(fusion, arrays.subset(train), arrays.subset(val), relevant, p, params.seed, device)
    metrics = {"train_pairs": len(train), "val_pairs": len(val), **result}
    out = Path(params.paths.train_retrieval)
    out.mkdir(parents=True, exist_ok=True)
    save_towers(towers, towers_file(out), {k: metrics[k] for k in ("best_epoch", "val")})
    write_json(out / "metrics.json", metrics)
    # Wall times vary run to run: beside the DVC outputs, never one of them.
    write_json(out / "timings.json", {"seconds": round(time.perf_counter() - started, 1), "device": str(device),
                                      "threads": torch.get_num_threads(), "epochs_run": len(result["history"]) - 1})
    log.info("train_retrieval: validation R@10 mean %s -> %s (epoch %d)", result["val"]["fusion_space"]["score"],
             result["val"]["retrieval"]["score"], result["best_epoch"])
    return metrics


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(load_params())


if __name__ == "__main__":
    main()

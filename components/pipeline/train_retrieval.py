"""Stage train_retrieval: the fusion network's frozen photo and title vectors -> artifacts/train_retrieval/adapter.pt.

Trains the retrieval adapter (components/models/retrieval.py) on the train split's (photo, title) pairs and keeps
the epoch whose validation retrieval (mean of title->image and image->title R@10 over the val products) is best;
the untrained adapter, which is the fusion space itself, is the first candidate, so the stage never makes search
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
from components.data import SPLIT_CODES, load_arrays
from components.models.retrieval import (
    AdapterConfig,
    Memory,
    RetrievalAdapter,
    adapter_file,
    class_block_order,
    info_nce,
    save_adapter,
    space_fingerprint,
)
from components.models.runtime import PREDICT_BATCH, predict_arrays, select_device

log = logging.getLogger(__name__)

KS = (1, 10)


def retrieval_scores(adapter: RetrievalAdapter, image: np.ndarray, text: np.ndarray, relevant: np.ndarray
                     ) -> dict[str, float]:
    """Title -> image and image -> title R@1/R@10/MRR among the given products, in the adapted space."""
    img, txt = adapter.transform("image", image), adapter.transform("text", text)
    t2i, i2t = M.retrieval(txt, img, relevant, KS), M.retrieval(img, txt, relevant, KS)
    out = {**{f"text_to_image_{k}": round(v, 4) for k, v in t2i.items()},
           **{f"image_to_text_{k}": round(v, 4) for k, v in i2t.items()}}
    out["score"] = round((t2i["recall_at_10"] + i2t["recall_at_10"]) / 2, 4)
    return out


def train_adapter(image: np.ndarray, text: np.ndarray, group: np.ndarray, labels: np.ndarray,
                  val: tuple[np.ndarray, np.ndarray, np.ndarray], p: TrainRetrievalParams, seed: int,
                  fingerprint: str = "") -> tuple[RetrievalAdapter, dict]:
    """The adapter of the best validation epoch (epoch 0 = the identity) and the history.

    image, text: (N, D) fusion-space unit vectors of the training pairs; group: product group per pair (repeated
    listings are positives of each other); labels: finest class per pair (same-class blocks = hard negatives);
    val: (image, text, relevant) of the validation products."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    adapter = RetrievalAdapter(AdapterConfig(image.shape[1], p.hidden, p.dropout), fingerprint)
    opt = torch.optim.AdamW(adapter.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    memory = Memory(p.memory, image.shape[1])
    x_img, x_txt = torch.from_numpy(image.astype(np.float32)), torch.from_numpy(text.astype(np.float32))
    g = torch.from_numpy(group.astype(np.int64))
    best = retrieval_scores(adapter, *val)
    history = [{"epoch": 0, **best}]
    best_state, best_epoch, stale = copy.deepcopy(adapter.state_dict()), 0, 0
    for epoch in range(1, p.epochs + 1):
        adapter.train()
        order, losses = class_block_order(labels, p.class_block, rng), []
        for start in range(0, len(order) - 1, p.batch_size):
            idx = torch.from_numpy(order[start:start + p.batch_size])
            if len(idx) < 2:
                continue
            img, txt = adapter("image", x_img[idx]), adapter("text", x_txt[idx])
            loss = info_nce(img, txt, g[idx], adapter.logit_scale, memory)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            memory.push(img, txt, g[idx])
            losses.append(float(loss.detach()))
        row = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4), **retrieval_scores(adapter, *val),
               "temperature": round(float(1 / adapter.logit_scale.detach().exp().clamp(max=100.0)), 4)}
        history.append(row)
        log.info("train_retrieval epoch %d: %s", epoch, row)
        if row["score"] > best["score"]:
            best, best_state, best_epoch, stale = row, copy.deepcopy(adapter.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= p.patience:
                break
    adapter.load_state_dict(best_state)
    return adapter.eval(), {"best_epoch": best_epoch, "val": {"fusion_space": history[0], "adapter": best},
                            "history": history}


def pair_rows(arrays, split: np.ndarray, code: int) -> np.ndarray:
    """Rows of one split with both a photo and a title: the pairs retrieval learns and is measured on."""
    return np.flatnonzero((split == code) & arrays.has_image.astype(bool) & (arrays.tokens != 0).any(1))


def run(params: Params) -> dict:
    p, started = params.train_retrieval, time.perf_counter()
    device = select_device(p.device)
    model, _, _ = load_checkpoint(fusion_checkpoint(params.paths.train_fusion), device)
    model.eval()
    arrays, split = load_arrays(params.paths.ingest, params.paths.features)
    train, val = pair_rows(arrays, split, SPLIT_CODES["train"]), pair_rows(arrays, split, SPLIT_CODES["val"])
    rows = np.concatenate([train, val])
    emb = predict_arrays(model, arrays.subset(rows), PREDICT_BATCH, device, embeddings=True)["embeddings"]
    image, text = emb["image"].astype(np.float32), emb["text"].astype(np.float32)
    frame = pd.read_parquet(Path(params.paths.ingest) / "products.parquet", columns=["title_norm", "image_md5"])
    v = slice(len(train), len(rows))
    relevant = M.relevance(frame["title_norm"].to_numpy()[val], frame["image_md5"].to_numpy()[val])
    embedded = time.perf_counter()
    adapter, result = train_adapter(image[: len(train)], text[: len(train)], arrays.group[train],
                                    arrays.labels[train, -1], (image[v], text[v], relevant), p, params.seed,
                                    space_fingerprint(model))
    metrics = {"train_pairs": len(train), "val_pairs": len(val), **result}
    out = Path(params.paths.train_retrieval)
    out.mkdir(parents=True, exist_ok=True)
    save_adapter(adapter, adapter_file(out), {k: metrics[k] for k in ("best_epoch", "val")})
    write_json(out / "metrics.json", metrics)
    # Wall times vary run to run: beside the DVC outputs, never one of them.
    write_json(out / "timings.json", {"embed_seconds": round(embedded - started, 1),
                                      "train_seconds": round(time.perf_counter() - embedded, 1),
                                      "device": str(device), "threads": torch.get_num_threads()})
    log.info("train_retrieval: val %s -> %s (epoch %d)", result["val"]["fusion_space"]["score"],
             result["val"]["adapter"]["score"], result["best_epoch"])
    return metrics


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(load_params())


if __name__ == "__main__":
    main()

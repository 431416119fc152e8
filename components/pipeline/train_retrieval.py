"""Stage train_retrieval: the fusion network's photo and title towers, fine-tuned for retrieval
-> artifacts/train_retrieval/towers.pt.

Trains the retrieval towers (components/models/retrieval.py) on the train split's (photo, title) pairs and keeps
the epoch whose validation retrieval (mean of title->image and image->title R@10 among the val products) is best;
the untrained towers, which are the fusion space itself, are the first candidate, so the stage never makes search
worse on validation. The fusion network is read, never changed: the categorizer's predictions stay as they are.

The photo tower's frozen part runs once per photo and view: `views` augmented copies (as is, mirrored, framed
closer) whose trunks are cached, one drawn per row and step, so the trained last stage does not learn the train
photos by heart (without them validation peaked at epoch 11 of 14 while the loss kept falling). The titles get
the text counterpart: `token_dropout` of their words and character n-grams dropped per step.

What separates look-alike listings is mostly what the catalog records beside the title (a colour, a gender):
`metadata_heads` trains one head per such column on both vectors beside InfoNCE (models/retrieval.py,
MetadataHeads), and `class_block` fills batches with runs of one article type, the negatives that need them.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from components import metrics as M
from components.atomic_io import write_json
from components.checkpoint import fusion_checkpoint, load_checkpoint
from components.config import Params, TrainRetrievalParams, load_params
from components.data import SPLIT_CODES, Arrays, load_arrays
from components.models.fusion import FusionModel
from components.models.retrieval import (
    Memory,
    MetadataHeads,
    RetrievalTowers,
    class_block_order,
    colour_histogram,
    info_nce,
    save_towers,
    space_fingerprint,
    towers_file,
)
from components.models.runtime import PREDICT_BATCH, select_device
from components.training.loop import optimizers

log = logging.getLogger(__name__)

KS = (1, 10)
VIEWS = ("as_is", "mirrored", "closer")  # the augmented copies of a train photo, in the order `views` takes them
CLOSER = 1.15  # "closer": the centre 1/1.15 of the photo, scaled back up (and mirrored)


def pair_rows(arrays: Arrays, split: np.ndarray, code: int) -> np.ndarray:
    """Rows of one split with both a photo and a title: the pairs retrieval learns and is measured on."""
    return np.flatnonzero((split == code) & arrays.has_image.astype(bool) & (arrays.tokens != 0).any(1))


def view(images: torch.Tensor, which: str) -> torch.Tensor:
    """(B, H, W, 3) uint8 photos seen another way (VIEWS), still uint8 and of the same size."""
    if which == "as_is":
        return images
    if which == "mirrored":
        return images.flip(2)
    if which == "closer":
        h, w = images.shape[1:3]
        ch, cw = round(h / CLOSER), round(w / CLOSER)
        top, left = (h - ch) // 2, (w - cw) // 2
        x = images[:, top:top + ch, left:left + cw].permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).flip(2)
    raise ValueError(f"unknown view {which!r}; one of {VIEWS}")


@torch.no_grad()
def trunks(towers: RetrievalTowers, images: np.ndarray, device: torch.device, views: int = 1) -> torch.Tensor:
    """(views, N, ...): the frozen photo-tower outputs of every image in each of the first `views` VIEWS, once
    (the last stage learns on top of them)."""
    if not 1 <= views <= len(VIEWS):
        raise ValueError(f"train_retrieval.views: {views}; 1 to {len(VIEWS)} ({', '.join(VIEWS)})")
    towers.eval()
    out = []
    for which in VIEWS[:views]:
        out.append(torch.cat([
            towers.trunk(view(torch.from_numpy(np.ascontiguousarray(images[i:i + PREDICT_BATCH])), which)
                         .to(device)).cpu()
            for i in range(0, len(images), PREDICT_BATCH)]))
    return torch.stack(out)


def colours(images: np.ndarray) -> torch.Tensor:
    """Every photo's colour histogram (the photo tower's colour branch reads it), once."""
    return torch.cat([colour_histogram(torch.from_numpy(np.ascontiguousarray(images[i:i + PREDICT_BATCH])))
                      for i in range(0, len(images), PREDICT_BATCH)])


def drop_ids(ids: torch.Tensor, rate: float, gen: torch.Generator) -> torch.Tensor:
    """`ids` with each id set to padding (0) at `rate`: a title missing some of its words this step."""
    if rate <= 0:
        return ids
    return ids * torch.rand(ids.shape, generator=gen).ge(rate)


@torch.no_grad()
def embed(towers: RetrievalTowers, trunk: torch.Tensor, colour: torch.Tensor, tokens: torch.Tensor,
          subwords: torch.Tensor, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of photos (their as-is trunks and colours) and titles."""
    towers.eval()
    img, txt = [], []
    for i in range(0, len(trunk), PREDICT_BATCH):
        img.append(towers.embed_image(None, trunk[i:i + PREDICT_BATCH].to(device),
                                      colour[i:i + PREDICT_BATCH].to(device)).cpu().numpy())
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


def metadata_columns(categorical: tuple[str, ...], names: tuple[str, ...]) -> list[int]:
    """Where each of `names` sits in the arrays' categorical ids (catalog.categorical's order)."""
    missing = [n for n in names if n not in categorical]
    if missing:
        raise ValueError(f"train_retrieval.metadata_heads: {missing} are not metadata the model reads "
                         f"(catalog.categorical {list(categorical)})")
    return [categorical.index(n) for n in names]


def train_towers(fusion: FusionModel, train: Arrays, val: Arrays, val_relevant: np.ndarray,
                 p: TrainRetrievalParams, seed: int, device: torch.device,
                 categorical: tuple[str, ...] = ()) -> tuple[RetrievalTowers, dict]:
    """The towers of the best validation epoch (epoch 0 = the fusion network's own) and the history.

    train, val: the (photo, title) pairs; a train row's `group` (repeated listings are positives of each other),
    finest label (same-class blocks = hard negatives) and metadata ids (`categorical` names their columns, for
    `p.metadata_heads`) come with it."""
    torch.manual_seed(seed)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    towers = RetrievalTowers(fusion, space_fingerprint(fusion), colour=p.colour, stages=p.stages).to(device)
    towers.prepare_training()
    # The title tower's n-gram table takes sparse gradients: lazy Adam for it, AdamW for the rest (as in training).
    opts = optimizers(towers, p.lr, p.weight_decay)
    heads, meta_ids = None, None
    if p.metadata_heads and p.metadata_weight > 0:
        cols = metadata_columns(categorical, p.metadata_heads)
        heads = MetadataHeads(fusion.cfg.embed_dim, {n: fusion.cfg.cardinalities[c]
                                                     for n, c in zip(p.metadata_heads, cols, strict=True)}).to(device)
        opts.append(torch.optim.AdamW(heads.parameters(), lr=p.lr, weight_decay=p.weight_decay))
        meta_ids = torch.from_numpy(train.cat[:, cols].astype(np.int64))
    memory = Memory(p.memory, fusion.cfg.embed_dim)
    tr_trunk, va_trunk = trunks(towers, train.images, device, p.views), trunks(towers, val.images, device)[0]
    tr_colour, va_colour = colours(train.images), colours(val.images)
    tokens, subwords = torch.from_numpy(train.tokens), torch.from_numpy(train.subwords)
    va_tokens, va_subwords = torch.from_numpy(val.tokens), torch.from_numpy(val.subwords)
    group, labels = torch.from_numpy(train.group.astype(np.int64)), train.labels[:, -1]
    best = scores(*embed(towers, va_trunk, va_colour, va_tokens, va_subwords, device), val_relevant)
    history = [{"epoch": 0, **best}]
    best_state, best_epoch, stale = copy.deepcopy(towers.state_dict()), 0, 0
    for epoch in range(1, p.epochs + 1):
        towers.train()
        order, losses = class_block_order(labels, p.class_block, rng), []
        for start in range(0, len(order), p.batch_size):
            idx = torch.from_numpy(order[start:start + p.batch_size])
            if len(idx) < 2:
                continue
            seen = torch.from_numpy(rng.integers(len(tr_trunk), size=len(idx)))  # each row's view this step
            img = towers.embed_image(None, tr_trunk[seen, idx].to(device), tr_colour[idx].to(device))
            txt = towers.embed_text(drop_ids(tokens[idx], p.token_dropout, gen).to(device),
                                    drop_ids(subwords[idx], p.token_dropout, gen).to(device))
            loss = info_nce(img, txt, group[idx].to(device), towers.logit_scale, memory)
            if heads is not None:
                loss = loss + p.metadata_weight * heads(img, txt, meta_ids[idx].to(device))
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
            memory.push(img, txt, group[idx])
            losses.append(float(loss.detach()))
        row = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4),
               **scores(*embed(towers, va_trunk, va_colour, va_tokens, va_subwords, device), val_relevant),
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
    towers, result = train_towers(fusion, arrays.subset(train), arrays.subset(val), relevant, p, params.seed, device,
                                  params.catalog.categorical)
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

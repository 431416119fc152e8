"""Retrieval towers: the fusion network's photo and title towers, fine-tuned so that a listing's photo finds its
own title and back; search embeds with them, categorizing never reads them.

The fusion network's shared space is shaped mostly by class-level losses, which pull every product of a class
together: right for categorizing, wrong for telling one listing from its neighbours. A small adapter on its frozen
vectors cannot undo that (measured: docs/experiments.md), because the photo vector has already lost what tells two
shirts of a class apart. So the retrieval towers start as copies of the fusion towers and learn by an
instance-level InfoNCE (learned temperature, negatives from a memory of recent batches and optionally from
same-class blocks): the photo tower's last stage and projection (its earlier stages stay the fusion network's, so
their outputs are computed once per image and per augmented view) and the whole title tower. At the start they are
the fusion space.

The photo tower also reads the photo's colours directly (`PhotoTower`): the fusion network's photo tower was
trained to name the article type, which a garment's colour does not change, so its vector keeps colour only
faintly, while most titles name one ("Nike Men Red Running Shoes") and a search for "navy shirt" should not
return a white one. A joint RGB histogram of the product's pixels (the white studio background left out) goes
through a small MLP whose output is added to the tower's; its last layer starts at zero, so at the start the
towers still are the fusion space.
"""
from __future__ import annotations

import copy
import hashlib
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.atomic_io import atomic_write_bytes
from components.models.fusion import FusionModel, ModelConfig, build_model

FORMAT = "deepfusion-retrieval-towers/2"  # /2: with "photo" (PhotoTower's build); /1: the fusion network's tower
COLOUR_BINS = 6  # per channel: 216 joint RGB bins tell navy from blue and olive from green at 80x64
BACKGROUND = 240  # a pixel with every channel above it is studio background (letterbox padding is 255)
COLOUR_HIDDEN = 256
TOWERS_FILE = "towers.pt"
MODALITIES = ("image", "text")
# The parts of a fusion network that fix its shared space and that no serving form rewrites: BatchNorm folding
# and int8 touch the image trunk only, so a checkpoint, a stack and a registered model of one training run agree.
FINGERPRINT_PREFIXES = ("towers.text.", "fuse.", "heads.")


class RetrievalError(ValueError):
    """The towers file is unreadable, of another format, or was trained on another fusion network."""


def space_fingerprint(model: nn.Module) -> str:
    """Names the fusion network retrieval towers were trained from (16 hex characters)."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if not name.startswith(FINGERPRINT_PREFIXES) or not isinstance(value, torch.Tensor):
            continue
        h.update(name.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def colour_histogram(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, COLOUR_BINS ** 3) float32: the square root of the share of the product's pixels
    (background left out) in each joint RGB bin; the root keeps a small coloured detail visible beside a large
    area. A photo that is all background gives zeros."""
    x = images.reshape(len(images), -1, 3).long()
    foreground = x.lt(BACKGROUND).any(-1).float()  # (B, P)
    q = x * COLOUR_BINS // 256
    idx = (q[..., 0] * COLOUR_BINS + q[..., 1]) * COLOUR_BINS + q[..., 2]
    hist = torch.zeros(len(images), COLOUR_BINS ** 3, device=images.device).scatter_add_(1, idx, foreground)
    return (hist / foreground.sum(1, keepdim=True).clamp(min=1.0)).sqrt()


class PhotoTower(nn.Module):
    """A fusion network's photo tower that may read the photo's colours and learn more than its last stage.

    `colour`: what it returns is the tower's vector plus an MLP of the photo's colour histogram (module
    docstring). `stages`: how many of the backbone's last stages learn (1: the last, as the fusion network
    trains it; 2: also the one before, whose outputs are then the cached trunk). It answers to everything that
    drives an image tower (`trunk`, `trunk_key`, `fold_batchnorm`, `freeze_backbone`), so a fusion network can
    carry it."""

    def __init__(self, tower: nn.Module, colour: bool = True, stages: int = 1) -> None:
        super().__init__()
        if stages not in (1, 2):
            raise ValueError(f"train_retrieval.stages: {stages}; 1 (the last stage learns) or 2")
        self.tower, self.stages = tower, stages
        self.colour = None
        if colour:
            self.colour = nn.Sequential(nn.Linear(COLOUR_BINS ** 3, COLOUR_HIDDEN), nn.ReLU(),
                                        nn.Linear(COLOUR_HIDDEN, tower.out_dim))
            nn.init.zeros_(self.colour[-1].weight)  # starts as the fusion network's own photo vector
            nn.init.zeros_(self.colour[-1].bias)
        self.out_dim = tower.out_dim

    def forward(self, images: torch.Tensor | None, trunk: torch.Tensor | None = None,
                colour: torch.Tensor | None = None) -> torch.Tensor:
        """`trunk`: this tower's `trunk()` of the batch; `colour`: its `colour_histogram`, needed when the photos
        themselves are not passed (training on cached trunks)."""
        if trunk is not None and self.stages == 2:
            trunk = self.tower.backbone.layer3(trunk)  # the ImageTower continues from its own trunk
        out = self.tower(images, trunk)
        if self.colour is None:
            return out
        if colour is None:
            if images is None:
                raise ValueError("this photo tower reads colours: pass the photos or their colour_histogram")
            colour = colour_histogram(images)
        return out + self.colour(colour.to(out.dtype))

    @property
    def folded(self) -> bool:
        return self.tower.folded

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        if self.stages == 1:
            return self.tower.trunk(images)
        b = self.tower.backbone
        return b.layer2(b.layer1(b.maxpool(b.act1(b.bn1(b.conv1(self.tower.preprocess(images)))))))

    def trunk_key(self) -> str | None:
        # A two-stage trunk is not the one the fusion network's towers share: never shared with them.
        return self.tower.trunk_key() if self.stages == 1 else None

    def fold_batchnorm(self) -> None:
        self.tower.fold_batchnorm()

    def freeze_backbone(self, keep_last_stage: bool = False) -> None:
        """As ImageTower's; with two learning stages, the stage before the last learns too (its weights and its
        BatchNorm statistics: taken off the tower's frozen list)."""
        self.tower.freeze_backbone(keep_last_stage)
        if keep_last_stage and self.stages == 2:
            stage = self.tower.backbone.layer3
            for param in stage.parameters():
                param.requires_grad_(True)
            learning = {id(m) for m in stage.modules()}
            self.tower.frozen = [m for m in self.tower.frozen if id(m) not in learning]
            self.tower.train(self.tower.training)


class RetrievalTowers(nn.Module):
    """Copies of a fusion network's image and text towers (and its temperature) with their own weights; the photo
    tower may read the photo's colours and learn its last two stages (`PhotoTower`)."""

    def __init__(self, fusion: FusionModel, fingerprint: str = "", colour: bool = True, stages: int = 1) -> None:
        super().__init__()
        missing = set(MODALITIES) - set(fusion.towers)
        if missing:
            raise RetrievalError(f"retrieval needs a fusion network with image and text towers; missing {missing}")
        self.cfg = fusion.cfg
        self.fingerprint = fingerprint  # the fusion network it started from
        self.towers = nn.ModuleDict({m: copy.deepcopy(fusion.towers[m]) for m in MODALITIES})
        self.photo = {"colour": colour, "stages": stages}  # how the photo tower was built: saved with it
        self.plain = not colour and stages == 1  # the fusion network's own photo tower: format /1
        if not self.plain:
            self.towers["image"] = PhotoTower(self.towers["image"], colour, stages)
        self.logit_scale = nn.Parameter(fusion.logit_scale.detach().clone())

    def prepare_training(self) -> None:
        """Freeze the photo tower before its learning stages (weights and BatchNorm statistics)."""
        self.towers["image"].freeze_backbone(keep_last_stage=True)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen part of the photo tower (compute once per image, feed to `embed_image`)."""
        return self.towers["image"].trunk(images)

    def embed_image(self, images: torch.Tensor | None, trunk: torch.Tensor | None = None,
                    colour: torch.Tensor | None = None) -> torch.Tensor:
        """`colour`: the photos' `colour_histogram`, needed when only their trunks are passed."""
        if self.plain:
            return F.normalize(self.towers["image"](images, trunk).float(), dim=-1)
        return F.normalize(self.towers["image"](images, trunk, colour).float(), dim=-1)

    def embed_text(self, tokens: torch.Tensor, subwords: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.towers["text"](tokens, subwords).float(), dim=-1)

    def prepare_for_inference(self) -> RetrievalTowers:
        self.eval()
        self.towers["image"].fold_batchnorm()
        return self

    def with_towers_of(self, fusion: FusionModel) -> FusionModel:
        """`fusion` seen through these towers: a shallow copy whose image and text towers are these (the metadata
        tower, fusion and heads shared), so whatever embeds with a fusion network embeds in the retrieval space."""
        swapped = copy.copy(fusion)
        swapped._modules = dict(fusion._modules)  # a module's children live here; the original keeps its own
        swapped.towers = nn.ModuleDict({**fusion.towers, **self.towers})
        return swapped

    def key(self) -> str:
        """Names the retrieval space (8 hex characters): part of a search index's model key."""
        h = hashlib.sha256(self.fingerprint.encode())
        for name, value in sorted(self.state_dict().items()):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                h.update(name.encode())
                h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:8]


# --- the objective -----------------------------------------------------------------------------------------------


class Memory:
    """Cross-batch memory (XBM, Wang et al. 2020): the vectors of the last `size` training rows, used as extra
    negatives. The towers drift slowly, so recent vectors are still good negatives, and the effective batch grows
    from the batch to batch + memory at the cost of one matrix product."""

    def __init__(self, size: int, dim: int) -> None:
        self.size = size
        self.image = torch.zeros(0, dim)
        self.text = torch.zeros(0, dim)
        self.group = torch.zeros(0, dtype=torch.long)

    def push(self, image: torch.Tensor, text: torch.Tensor, group: torch.Tensor) -> None:
        if not self.size:
            return
        dev = image.device
        self.image = torch.cat([image.detach(), self.image.to(dev)])[: self.size]
        self.text = torch.cat([text.detach(), self.text.to(dev)])[: self.size]
        self.group = torch.cat([group.to(dev), self.group.to(dev)])[: self.size]


def info_nce(image: torch.Tensor, text: torch.Tensor, group: torch.Tensor, logit_scale: torch.Tensor,
             memory: Memory | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of (photo, title) pairs. Rows of one product group (repeated listings) are
    all positives; remembered rows are negatives, except those of the query's own group (neither positive nor
    negative: one may be this very listing, a few steps old)."""
    scale = logit_scale.exp().clamp(max=100.0)
    pos = group.unsqueeze(0).eq(group.unsqueeze(1)).float()
    target = pos / pos.sum(1, keepdim=True)
    keys_i, keys_t = image, text
    blocked = None
    if memory is not None and len(memory.group):
        keys_i, keys_t = torch.cat([image, memory.image]), torch.cat([text, memory.text])
        blocked = group.unsqueeze(1).eq(memory.group.unsqueeze(0))  # (B, M)
        target = torch.cat([target, target.new_zeros(blocked.shape)], dim=1)

    # Blocked rows get a finite floor, not -inf: their target weight is 0, and 0 * -inf would be NaN.
    def side(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        logits = scale * q @ keys.t()
        if blocked is not None:
            logits = torch.cat([logits[:, : len(q)], logits[:, len(q):].masked_fill(blocked, -1e9)], 1)
        return F.cross_entropy(logits, target)

    return 0.5 * (side(text, keys_i) + side(image, keys_t))


class MetadataHeads(nn.Module):
    """Training-only heads: one linear classifier per metadata column (a colour, a gender), shared by the photo and
    the title vectors. InfoNCE alone leaves what a batch rarely contrasts faint: a shuffled batch of 100+ classes
    is told apart by article type, and the photo vectors named the catalog colour in 52 % of validation photos
    where a linear probe of the photo's colour histogram and vector together named 63 %. One head for both sides
    also lays each value along the same direction in both, so the cosine reads it. Not saved with the towers."""

    # Unit vectors give logits in [-|w|, |w|]; a fixed scale (NormFace's s) lets a small head be confident.
    SCALE = 16.0

    def __init__(self, dim: int, cardinalities: dict[str, int]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in cardinalities.items()})

    def forward(self, image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over both sides and every head; labels (B, heads) in the heads' order, 0 = unknown
        (not counted)."""
        losses = []
        for j, head in enumerate(self.heads.values()):
            y = labels[:, j]
            if not bool(y.ne(0).any()):
                continue
            for v in (image, text):
                losses.append(F.cross_entropy(head(self.SCALE * v), y, ignore_index=0))
        return torch.stack(losses).mean() if losses else image.new_zeros(())


def class_block_order(labels: np.ndarray, block: int, rng: np.random.Generator) -> np.ndarray:
    """An epoch's row order in which every run of `block` rows comes from one class (the rest of a class's rows
    shuffled into blocks of their own): consecutive batches then hold same-class products, the hard negatives a
    shuffled batch of 100+ classes rarely has. block <= 1: a plain shuffle."""
    if block <= 1:
        return rng.permutation(len(labels))
    blocks = []
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        blocks += [rows[i:i + block] for i in range(0, len(rows), block)]
    return np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])


# --- the file ----------------------------------------------------------------------------------------------------


def towers_file(train_retrieval_dir: str | Path) -> Path:
    """Where the train_retrieval stage writes the towers (params.paths.train_retrieval)."""
    return Path(train_retrieval_dir) / TOWERS_FILE


def save_towers(towers: RetrievalTowers, path: Path, metrics: dict) -> None:
    """A self-describing checkpoint: format, the architecture, the fusion network it fits, weights, scores."""
    buf = io.BytesIO()
    torch.save({"format": "deepfusion-retrieval-towers/1" if towers.plain else FORMAT, "photo": towers.photo,
                "model_config": towers.cfg.to_dict(), "fingerprint": towers.fingerprint,
                "state_dict": towers.state_dict(), "metrics": metrics}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_towers(path: str | Path) -> RetrievalTowers:
    """Towers ready to embed (BatchNorm folded)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)  # data only: no code runs on load
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same error for the caller
        raise RetrievalError(f"{path}: not a readable retrieval towers file ({exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") not in (FORMAT, "deepfusion-retrieval-towers/1"):
        raise RetrievalError(f"{path}: not a {FORMAT} file; rerun `dvc repro train_retrieval`")
    photo = blob.get("photo") or {"colour": False, "stages": 1}
    towers = RetrievalTowers(build_model(ModelConfig.from_dict(blob["model_config"])), blob["fingerprint"],
                             colour=bool(photo["colour"]), stages=int(photo["stages"]))
    towers.load_state_dict(blob["state_dict"])
    return towers.prepare_for_inference()

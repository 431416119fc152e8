"""Categorize raw products with a trained checkpoint: the one serving path (predict CLI, pyfunc, search).

Rows go through the same `features.encode_frame` and `images.decode_image` as training.
"""
from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.checkpoint import load_checkpoint
from components.data import Arrays
from components.encoders import Encoders, encode_frame
from components.images import MAX_IMAGE_BYTES, ImageBatch, ImageError, ImagePathError, decode_image, read_image_file
from components.models.fusion import FusionModel
from components.models.runtime import PREDICT_BATCH, predict_arrays, prepare_for_inference, select_device

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def load_images(sources: list[object], height: int, width: int, root: str | Path | None = None) -> ImageBatch:
    """Decode each source: bytes, a base64 string, a file path under `root`, or empty/None for no image.

    Paths are read only when a `root` is given (the batch folder; the served model has none unless
    DEEPFUSION_IMAGE_ROOT names one) and only inside it once resolved (no `../`, absolute paths or symlinks
    out of it), so a row cannot read, or learn of, any other file of the machine. Nothing about one image
    stops the batch: every failure is that row's status.
    """
    base = Path(root).resolve() if root is not None else None
    pixels = np.zeros((len(sources), height, width, 3), dtype=np.uint8)
    status = []
    for i, src in enumerate(sources):
        try:
            data = _read_source(src, base)
            if data is None:
                status.append("no_image")
                continue
            pixels[i] = decode_image(data, height, width)
            status.append("ok")
        except ImageError as exc:
            status.append(f"corrupt_image: {exc}")
        except ImagePathError as exc:
            status.append(f"rejected_image: {exc}")
        except OSError as exc:  # permission denied, a directory, an I/O error: this row only
            status.append(f"unreadable_image: {type(exc).__name__}: {exc.strerror or exc}")
    return ImageBatch(pixels, status)


def _read_source(src: object, root: Path | None) -> bytes | None:
    if src is None or (isinstance(src, float) and np.isnan(src)):
        return None
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    if not isinstance(src, str) or not src.strip():
        return None
    s = src.strip()
    if len(s) > 2 * MAX_IMAGE_BYTES:
        raise ImageError(f"image string of {len(s):,} characters is over the size limit")
    decoded = _base64_image(s)
    if decoded is not None:
        return decoded
    if len(s) < 1024 and ("/" in s or "\\" in s or s.lower().endswith(IMAGE_SUFFIXES)):
        if root is None:
            raise ImagePathError("image paths are not accepted here; send the image as base64")
        return read_image_file(root, s)
    try:
        return base64.b64decode(s, validate=True)  # valid base64 of something that is not an image: decode says so
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"image is neither a path nor valid base64 ({exc})") from exc


IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF")  # JPEG, PNG, WebP (RIFF....WEBP)


def _base64_image(s: str) -> bytes | None:
    """The bytes when `s` is strict base64 of a JPEG/PNG/WebP file (base64 may hold '/', like a path)."""
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if data.startswith(IMAGE_MAGIC) else None


def to_arrays(frame: pd.DataFrame, images: ImageBatch, encoders: Encoders) -> Arrays:
    """Raw rows + decoded images -> model inputs (labels unknown: serving never reads them)."""
    feats = encode_frame(frame, encoders)
    n = len(frame)
    return Arrays(tokens=feats["tokens"], subwords=feats["subwords"], attrs=feats["attrs"], cat=feats["cat"],
                  num=feats["num"], images=images.pixels, has_image=np.array([s == "ok" for s in images.status], bool),
                  labels=np.full((n, 3), -1, dtype=np.int64), group=np.arange(n, dtype=np.int64))


def masked_embeddings(embs: dict[str, np.ndarray], a: Arrays) -> dict[str, np.ndarray]:
    """The image embedding of a product without image is NaN: it must not be searched as a picture."""
    if "image" in embs:
        embs["image"] = np.where(a.has_image[:, None], embs["image"], np.nan).astype(np.float32)
    return embs


class Categorizer:
    """A loaded model plus its encoders; turns catalog rows into predictions and embeddings."""

    def __init__(self, model: FusionModel, encoders: Encoders, meta: dict, device: torch.device,
                 image_size: tuple[int, int]) -> None:
        self.model, self.encoders, self.meta, self.device = model, encoders, meta, device
        self.image_size = image_size
        self.schema = None  # the catalog schema the model was logged with (MLflow models carry theirs)

    @property
    def levels(self) -> tuple[str, ...]:
        """The catalog's label levels the model predicts, coarsest first."""
        return self.encoders.levels

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Categorizer:
        dev = select_device(device)
        model, enc, meta = load_checkpoint(path, dev)
        prepare_for_inference(model)
        size = tuple(meta.get("image_size", (80, 64)))
        return cls(model, enc, meta, dev, size)

    def arrays(self, frame: pd.DataFrame, images: ImageBatch) -> Arrays:
        return to_arrays(frame, images, self.encoders)

    def predict(self, frame: pd.DataFrame, images: ImageBatch, batch_size: int = PREDICT_BATCH,
                embeddings: bool = False) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """Predictions table (id, level, level_confidence, status) and optional embeddings."""
        a = self.arrays(frame, images)
        out = predict_arrays(self.model, a, batch_size, self.device, embeddings=embeddings)
        best = (np.stack([p.argmax(1) for p in out["probs"]], axis=1) if len(frame)
                else np.zeros((0, len(self.levels)), np.int64))
        return self.table(frame, images, out["probs"], best), masked_embeddings(out.get("embeddings", {}), a)

    def table(self, frame: pd.DataFrame, images: ImageBatch, probs: list[np.ndarray], best: np.ndarray
              ) -> pd.DataFrame:
        """The predictions table (id, level, level_confidence, status) from per-level probabilities and the
        chosen class ids (N, levels)."""
        pred = pd.DataFrame({"id": frame["id"].to_numpy() if "id" in frame else np.arange(len(frame))})
        rows = np.arange(len(frame))
        for lvl, name in enumerate(self.levels):
            names = np.asarray(self.encoders.labels[name], dtype=object)
            pred[name] = names[best[:, lvl]] if len(frame) else []
            pred[f"{name}_confidence"] = probs[lvl][rows, best[:, lvl]].round(4) if len(frame) else []
        pred["status"] = [s.split(":")[0] if s != "ok" else "ok" for s in images.status]
        return pred

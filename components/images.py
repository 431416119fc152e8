"""Image decoding shared by ingest, predict and serving: one preprocessing path, no skew."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Catalog shots sit on white; padding with white keeps the product's look when the aspect differs.
PAD_VALUE = 255
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
MAX_IMAGE_BYTES = 20 * 2**20  # a catalog shot is ~3 KB; a 20 MB file is an upload mistake or an attack
MAX_IMAGE_PIXELS = 40_000_000  # 40 Mpx (~120 MB decoded): above any camera's shot, far below Pillow's 178 Mpx


@dataclass
class ImageBatch:
    pixels: np.ndarray  # (N, H, W, 3) uint8
    status: list[str]  # "ok", "no_image" or "corrupt_image: why"


class ImageError(ValueError):
    """An image file cannot be decoded (corrupt, truncated, not an image)."""


class ImagePathError(ValueError):
    """An image path points outside the folder images may be read from (or paths are not accepted)."""


def read_image_file(root: Path, rel: str) -> bytes | None:
    """The bytes of image `rel` of a catalog folder `root` (resolved: no `../`, absolute path or symlink may
    lead out of it), None when it has no such file. Raises ImagePathError (outside), ImageError (too big),
    OSError (unreadable)."""
    root = root.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise ImagePathError(f"{rel!r} is outside the batch folder; images must be inside it")
    if not path.is_file():
        return None  # the product has no image (inside the batch folder: nothing is revealed)
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise ImageError(f"file of {size:,} bytes is over the {MAX_IMAGE_BYTES:,}-byte limit")
    return path.read_bytes()


def decode_image(data: bytes, height: int, width: int) -> np.ndarray:
    """Decode JPEG/PNG/WebP bytes to an (height, width, 3) uint8 array, aspect kept, padded with white.

    Hostile files are refused before they cost memory: more than MAX_IMAGE_BYTES, more than
    MAX_IMAGE_PIXELS (a decompression bomb declares its size in a few header bytes), another format.
    Every failure is an ImageError, whatever the decoder raised.
    """
    if not data:
        raise ImageError("empty file")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"file of {len(data):,} bytes is over the {MAX_IMAGE_BYTES:,}-byte limit")
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageError(f"image of {w}x{h} pixels is over the {MAX_IMAGE_PIXELS:,}-pixel limit")
            if img.format == "JPEG" and w >= 2 * width and h >= 2 * height:
                img.draft("RGB", (width, height))  # decode a large JPEG at 1/2..1/8 scale: less time and memory
            img.load()  # forces a full decode: truncated files raise here, not later in training
            img = img.convert("RGB")
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(f"not a {'/'.join(ALLOWED_FORMATS)} image ({exc})") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise ImageError(f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    w, h = img.size
    if w < 4 or h < 4:
        raise ImageError(f"image too small ({w}x{h})")
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    out = np.full((height, width, 3), PAD_VALUE, dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top:top + new_h, left:left + new_w] = np.asarray(img, dtype=np.uint8)
    return out


def dhash(pixels: np.ndarray) -> int:
    """64-bit difference hash of an (H, W, 3) uint8 image: equal for re-encoded/resized copies."""
    gray = Image.fromarray(pixels).convert("L").resize((9, 8), Image.Resampling.BILINEAR)
    arr = np.asarray(gray, dtype=np.int16)
    bits = (arr[:, 1:] > arr[:, :-1]).flatten()  # (64,)
    return int(np.packbits(bits).view(">u8")[0])


def content_md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def shape_colour_descriptor(pixels: np.ndarray, cell: int = 8, bins: int = 9) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, D) float32: a fixed image description for a linear probe, no learned weights.

    Gradient-orientation histograms per `cell` x `cell` block (HOG without block normalisation; the square
    root tames strong edges) plus the block's mean colour. The audit's image witness reads it: no pretrained
    image network can be downloaded here, and this separates a watch from a shirt in a fraction of a CNN's time.
    """
    n, h, w = pixels.shape[:3]
    ch, cw = h // cell, w // cell
    px = pixels[:, : ch * cell, : cw * cell].astype(np.float32)
    gray = px.mean(-1)
    gx, gy = np.zeros_like(gray), np.zeros_like(gray)
    gx[:, :, 1:-1] = gray[:, :, 2:] - gray[:, :, :-2]
    gy[:, 1:-1, :] = gray[:, 2:, :] - gray[:, :-2, :]
    magnitude = np.hypot(gx, gy)
    orientation = np.minimum(((np.arctan2(gy, gx) % np.pi) / np.pi * bins).astype(np.int64), bins - 1)
    hist = np.zeros((n, ch * cell, cw * cell, bins), np.float32)
    np.put_along_axis(hist, orientation[..., None], magnitude[..., None], axis=-1)
    hist = hist.reshape(n, ch, cell, cw, cell, bins).sum((2, 4)).reshape(n, -1)
    hist /= np.linalg.norm(hist, axis=1, keepdims=True) + 1e-6
    colour = px.reshape(n, ch, cell, cw, cell, 3).mean((2, 4)).reshape(n, -1) / 255.0
    return np.concatenate([np.sqrt(hist), colour], axis=1)

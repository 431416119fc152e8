"""Training-image augmentation: shape, fill, determinism and what each option changes."""
from __future__ import annotations

import torch

from components.data import augment_images


def shots(b: int = 6) -> torch.Tensor:
    """White catalog shots with a dark product in the middle and a marker in the top-left corner."""
    img = torch.full((b, 80, 64, 3), 255, dtype=torch.uint8)
    img[:, 20:60, 16:48] = 40
    img[:, 8:12, 8:12] = 0
    return img


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shape_dtype_and_determinism_under_a_seeded_generator():
    x = shots()
    a, b = augment_images(x, gen(), 0.15, 0.25), augment_images(x, gen(), 0.15, 0.25)
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, augment_images(x, gen(1), 0.15, 0.25))
    assert torch.equal(x, shots())  # the input batch is never written to
    assert augment_images(x[:0], gen()).shape == (0, 80, 64, 3)


def test_flip_and_shift_only_keep_the_product_and_fill_white():
    x = shots(64)
    y = augment_images(x, gen(), 0.0, 0.0)
    dark = y.float().mean(3) < 100
    # Same product area up to interpolation at the edges; nothing dark appears at the borders.
    assert abs(int(dark.sum()) - int((x.float().mean(3) < 100).sum())) < 0.05 * int(dark.sum())
    assert not dark[:, :, 0].any() and not dark[:, :, -1].any()
    # About half the batch is mirrored: the corner marker moves to the right-hand side.
    right = (y[:, :16, 48:].float().mean((1, 2, 3)) < 250).float().mean()
    assert 0.25 < right < 0.75


def test_scale_jitter_changes_the_product_size_both_ways():
    x = shots(64)
    area = (augment_images(x, gen(), 0.3, 0.0).float().mean(3) < 100).sum((1, 2)).float()
    base = float((x[0].float().mean(2) < 100).sum())
    assert area.min() < 0.8 * base and area.max() > 1.2 * base


def test_erase_blanks_a_white_box_in_about_the_requested_share():
    x = torch.zeros(400, 80, 64, 3, dtype=torch.uint8)  # black images: any white pixel was erased
    y = augment_images(x, gen(), 0.0, 0.5)
    inner = y[:, 4:-4, 4:-4]  # away from the white fill the shift brings in at the borders
    erased = (inner == 255).all(3).flatten(1).any(1).float().mean()
    assert 0.35 < erased < 0.65
    assert not (augment_images(x, gen(), 0.0, 0.0)[:, 4:-4, 4:-4] == 255).any()


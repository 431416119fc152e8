"""Planted label noise: flip a known share of a catalog's labels, so that what finds mislabels can be measured.

Two kinds, as they happen in real catalogs: a *sibling* flip re-files a product under another articleType of the
same subCategory (Casual Shoes -> Sports Shoes), a *random* flip under any other articleType; the parent levels
follow the new type, as a merchandiser's re-filing would. Used by the audit's noise benchmark
(research/audit_noise.py); the review station's benchmark is meant to reuse it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def plant_label_flips(df: pd.DataFrame, sibling_share: float, random_share: float, seed: int) -> pd.DataFrame:
    """A copy with `noise` = '', 'sibling' or 'random' per row and the flipped labels."""
    rng = np.random.default_rng(seed)
    out = df.copy()
    out["noise"] = ""
    paths = out.drop_duplicates("articleType").set_index("articleType")[["masterCategory", "subCategory"]]
    order = rng.permutation(len(out))
    n_sib, n_rand = int(sibling_share * len(out)), int(random_share * len(out))
    types = paths.index.to_numpy()
    sib_done = 0
    for i in order:
        if sib_done == n_sib:
            break
        cur, sub = out.at[i, "articleType"], out.at[i, "subCategory"]
        siblings = [t for t in types if t != cur and paths.at[t, "subCategory"] == sub]
        if siblings:
            new = rng.choice(siblings)
            out.loc[i, ["articleType", "masterCategory", "subCategory"]] = [new, *paths.loc[new]]
            out.at[i, "noise"] = "sibling"
            sib_done += 1
    free = [i for i in order if out.at[i, "noise"] == ""][:n_rand]
    for i in free:
        new = rng.choice([t for t in types if t != out.at[i, "articleType"]])
        out.loc[i, ["articleType", "masterCategory", "subCategory"]] = [new, *paths.loc[new]]
        out.at[i, "noise"] = "random"
    return out


def plant_image_swaps(df: pd.DataFrame, images: np.ndarray, share: float, seed: int,
                      level: str = "subCategory") -> tuple[pd.DataFrame, np.ndarray]:
    """A copy whose `noise` is 'image' for a share of photographed products, and the images with their photo
    replaced by that of a product of another `level` class: title and label still agree, the photo does not
    (a listing that shows the wrong product). Rows already carrying noise are left alone."""
    rng = np.random.default_rng(seed + 1)
    out = df.copy()
    if "noise" not in out:
        out["noise"] = ""
    pixels = np.array(images)  # a writable copy: the caller's array (often a memory map) stays as it was
    has = out["has_image"].to_numpy(bool) if "has_image" in out else np.ones(len(out), bool)
    free = np.flatnonzero(has & (out["noise"].to_numpy() == ""))
    chosen = rng.choice(free, size=min(int(share * len(out)), len(free)), replace=False)
    classes = out[level].to_numpy()
    photographed = np.flatnonzero(has)
    for i in chosen:
        donors = photographed[classes[photographed] != classes[i]]
        pixels[i] = images[rng.choice(donors)]
        out.iat[i, out.columns.get_loc("noise")] = "image"
    return out, pixels

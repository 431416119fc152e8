"""Shared fixtures: synthetic catalogs made in the test, the real-data slice, the shrunken params."""
from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from components.config import deep_merge, load_raw, params_from_dict

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = params_from_dict(load_raw(ROOT / "params.yaml")).catalog  # the Myntra export's shape, as params.yaml declares


@pytest.fixture(scope="session", autouse=True)
def quiet_libraries():
    """No telemetry from the libraries under test (scripts/test.sh sets these too; this covers bare pytest)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "False", "DO_NOT_TRACK": "1"}.items():
            if k not in os.environ:
                mp.setenv(k, v)
        yield

@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Registered models' artifacts are cached per machine (components.serving.mlflow_model): the tests' in a
    folder of their own, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPFUSION_MODEL_CACHE", str(tmp_path_factory.mktemp("model-cache")))
        yield

# (master, sub, article, colour of the synthetic product shot, shape)
TAXONOMY = [
    ("Apparel", "Topwear", "Tshirts", (200, 30, 30), "square"),
    ("Apparel", "Topwear", "Shirts", (30, 30, 200), "square"),
    ("Apparel", "Bottomwear", "Jeans", (30, 30, 120), "tall"),
    ("Footwear", "Shoes", "Casual Shoes", (120, 80, 30), "wide"),
    ("Footwear", "Shoes", "Sports Shoes", (30, 160, 30), "wide"),
    ("Accessories", "Watches", "Watches", (90, 90, 90), "circle"),
]
BRANDS = ["Nike", "Puma", "Adidas", "Roadster", "Titan", "Fastrack"]
COLOURS = ["Black", "Blue", "Red", "Green", "White"]

TINY_OVERRIDES = {
    "ingest": {"min_class_count": 3, "workers": 1},
    "validate": {"min_rows": 10, "max_missing_image_share": 0.2},
    "features": {"min_token_count": 1, "subword_buckets": 4096},
    "model": {"backbone": "resnet18", "backbone_channels": [8, 16, 32, 64], "stem_width": 8, "embed_dim": 32,
              "text_dim": 16, "text_channels": 16, "meta_dim": 8},
    "train_baseline": {"tfidf": {"max_features": 5000}, "train": {"epochs": 2, "batch_size": 32,
                                                                   "patience": 2}},
    "train_fusion": {"train": {"epochs": 2, "batch_size": 32, "patience": 2}},
    "train_retrieval": {"epochs": 3, "batch_size": 32, "memory": 64},
    "evaluate": {"bootstrap": 20},
    "stack": {"folds": 3, "balance_grid": [0.25]},
    "drift": {"null_batches": 100},
}


def product_image(colour: tuple[int, int, int], shape: str, rng: random.Random, size=(60, 80)) -> bytes:
    img = Image.new("RGB", size, (255, 255, 255))
    px = img.load()
    w, h = size
    jitter = rng.randint(-4, 4)
    for y in range(h):
        for x in range(w):
            cx, cy = x - w / 2, y - h / 2 + jitter
            inside = {"square": abs(cx) < 18 and abs(cy) < 18, "tall": abs(cx) < 10 and abs(cy) < 32,
                      "wide": abs(cx) < 26 and abs(cy) < 10, "circle": cx * cx + cy * cy < 300}[shape]
            if inside:
                px[x, y] = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in colour)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_catalog(folder: Path, n: int = 120, seed: int = 0, comma_titles: int = 3, missing_images: int = 4,
                 corrupt_images: int = 2, labeled: bool = True, start_id: int = 1000) -> Path:
    """A catalog in the export layout: bare-comma styles.csv, quoted products.csv, images/<id>.jpg."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    styles = ["id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"]
    prows = []
    for i in range(n):
        pid = start_id + i
        master, sub, article, colour, shape = TAXONOMY[i % len(TAXONOMY)]
        brand, col = rng.choice(BRANDS), rng.choice(COLOURS)
        gender = rng.choice(["Men", "Women"])
        title = f"{brand} {gender} {col} {article} {pid}"
        if i < comma_titles:
            title = f"{brand} {gender}, {col}, {article} {pid}"
        labels = f"{master},{sub},{article}" if labeled else ",,"
        styles.append(f"{pid},{gender},{labels},{col},Summer,2015,Casual,{title}")
        has_image = i >= comma_titles + missing_images or i < comma_titles
        if has_image:
            (folder / "images" / f"{pid}.jpg").write_bytes(product_image(colour, shape, rng))
        prows.append({"id": pid, "image": f"images/{pid}.jpg" if has_image else "", "brandName": brand,
                      "ageGroup": f"Adults-{gender}", "colour1": "NA", "colour2": "", "price": 500 + 10 * i,
                      "discountedPrice": 450 + 10 * i, "catalogAddDate": 1420070400 + 86400 * i,
                      "displayCategories": "Casual Wear", "variantName": article, "fashionType": "Fashion",
                      "articleAttributes": json.dumps({"Fit": rng.choice(["Regular", "Slim"]), "Fabric": "NA"}),
                      "description": f"A {col.lower()} {article.lower()}"})
    for j in range(corrupt_images):
        pid = start_id + n - 1 - j
        (folder / "images" / f"{pid}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "styles.csv").write_text("\n".join(styles) + "\n", encoding="utf-8")
    with (folder / "products.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(prows[0]))
        writer.writeheader()
        writer.writerows(prows)
    return folder


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    return make_catalog(tmp_path / "data")


def tiny_raw(tmp: Path, raw_dir: Path, extra: dict | None = None) -> dict:
    raw = deep_merge(load_raw(ROOT / "params.yaml"), TINY_OVERRIDES)
    paths = {k: str(tmp / "artifacts" / k) for k in ("ingest", "validate", "features", "train_baseline", "train_fusion",
                                                     "train_retrieval", "evaluate", "audit", "stack", "search",
                                                     "categorize")}
    raw = deep_merge(raw, {"paths": {**paths, "raw": str(raw_dir), "mlflow_db": str(tmp / "mlflow.db"),
                                     "drift_cache": str(tmp / "artifacts" / "drift_null"),
                                     "monitoring": str(tmp / "artifacts" / "monitoring"),
                                     "drift": str(tmp / "artifacts" / "drift"), "review": str(tmp / "review"),
                                     "corrections": str(tmp / "corrections" / "corrections.csv")}})
    return deep_merge(raw, extra or {})


@pytest.fixture
def tiny_params(tmp_path: Path, catalog: Path):
    return params_from_dict(tiny_raw(tmp_path, catalog))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def wait_dag_run(api, dag_id: str, run_id: str, minutes: float) -> dict:
    """Poll an Airflow REST API (`api(method, path)`) until the DAG run ends; its last state, or an assertion error.
    Shared by the platform and compose tests (and the drills)."""
    import time

    deadline = time.time() + minutes * 60
    while time.time() < deadline:
        run = api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        if run["state"] in ("success", "failed"):
            return run
        time.sleep(5)
    raise AssertionError(f"{dag_id} {run_id} still {run['state']} after {minutes} min")


def dag_workspace(ws: Path) -> Path:
    """A project workspace the DAGs can run in (DEEPFUSION_HOME): a synthetic catalog, tiny params, dvc.yaml,
    the components package linked, DVC initialised without git."""
    make_catalog(ws / "data", n=150, seed=5)
    shutil.copy(ROOT / "dvc.yaml", ws / "dvc.yaml")
    shutil.copytree(ROOT / "corrections", ws / "corrections")
    os.symlink(ROOT / "components", ws / "components")
    raw = deep_merge(load_raw(ROOT / "params.yaml"), TINY_OVERRIDES)
    raw = deep_merge(raw, {"registry": {"floors": {"masterCategory": 0.1, "subCategory": 0.1, "articleType": 0.1}},
                           "train_fusion": {"train": {"lr": 3.0e-3, "patience": 8}},
                           "train_baseline": {"train": {"patience": 8}},
                           "drift": {"reference_date": "2030-01-01"}})
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "--no-scm", "-q"], cwd=ws, check=True)
    return ws


def train_tiny_stack(tmp: Path):
    """A small stacked categorizer (TF-IDF + fusion network + combiner) on a synthetic catalog, ~30 s on CPU:
    (params, catalog folder, fusion metrics); `tmp` is its workspace (params.yaml written there)."""
    from components.pipeline import (
        evaluate,
        features,
        ingest,
        stack,
        train_baseline,
        train_fusion,
        train_retrieval,
        validate,
    )

    data = make_catalog(tmp / "data", n=180, seed=1)
    raw = tiny_raw(tmp, data, {
        "train_fusion": {"init_image_from_baseline": False, "finetune_image": "all",
                         # The synthetic shots name their class by colour and shape alone, so with the default
                         # 0.15 the tiny model leans on the image and its title path stays seed-dependent
                         # (imageless masterCategory 0.75-1.0 over seeds); 0.4 makes it learn both.
                         "train": {"epochs": 20, "patience": 20, "lr": 3.0e-3, "batch_size": 32,
                                   "modality_dropout": 0.4}},
        "registry": {"floors": {"masterCategory": 0.3, "subCategory": 0.3, "articleType": 0.3}}})
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))  # for commands run in `tmp`
    params = params_from_dict(raw)
    ingest.run(params)
    validate.run(params)
    features.run(params)
    train_baseline.run(params, "tfidf")
    metrics = train_fusion.run(params)
    train_retrieval.run(params)
    stack.run(params)
    evaluate.run(params)
    return params, data, metrics


def shaped_taxonomy(depth: int) -> list[tuple[str, ...]]:
    """The six synthetic classes (TAXONOMY) as label paths of any depth, nested: the finest level is the class,
    the one above pairs them (3 parents), every level above that splits those in two."""
    names = [f"L{k}" for k in range(depth)]
    paths = []
    for j, (_, _, article, _, _) in enumerate(TAXONOMY):
        groups = [f"{names[k]}-{(j // 2) // 2 if k < depth - 2 else j // 2}" for k in range(depth - 1)]
        paths.append((*groups, article))
    return paths


def make_shaped_catalog(folder: Path, depth: int, *, n: int = 150, seed: int = 0, sku: bool = False,
                        path_column: bool = False, metadata: bool = True, attributes: bool = False,
                        image_column: bool = False, start: int = 500) -> tuple[Path, dict]:
    """A catalog in another retailer's shape, and the `catalog:` params that declare it: one file, a title
    column called `name`, the labels as `depth` level columns (`dept0`...) or one `category_path` column
    ("A > B > C"), ids as integers or SKUs with letters, metadata (colour, fit as categorical, `cost` as numeric)
    or none, two plain attribute columns (material, pattern), images under `photos/` named by an `image_file`
    column or found by the pattern `pics/{id}.jpg`."""
    rng = random.Random(seed)
    paths = shaped_taxonomy(depth)
    levels = [f"dept{k}" for k in range(depth)]
    img_dir = folder / ("photos" if image_column else "pics")
    img_dir.mkdir(parents=True, exist_ok=True)
    header = ["sku", *(["category_path"] if path_column else levels), "name"]
    header += ["colour", "fit", "cost"] if metadata else []
    header += ["material", "pattern"] if attributes else []
    header += ["image_file"] if image_column else []
    rows = []
    for i in range(n):
        j = i % len(TAXONOMY)
        _, _, article, colour, shape = TAXONOMY[j]
        pid = f"SKU-{start + i:05d}a" if sku else str(start + i)
        col = rng.choice(COLOURS)
        row = {"sku": pid, "name": f"{rng.choice(BRANDS)} {col} {article} {i}"}
        if path_column:
            row["category_path"] = " > ".join(paths[j])
        else:
            row.update(dict(zip(levels, paths[j])))
        if metadata:
            row.update({"colour": col, "fit": rng.choice(["Regular", "Slim"]), "cost": str(100 + 7 * i)})
        if attributes:
            row.update({"material": rng.choice(["Cotton", "Leather", "Steel"]),
                        "pattern": rng.choice(["Solid", "Striped"])})
        name = f"p_{i:04d}.jpg" if image_column else f"{pid}.jpg"
        if image_column:
            row["image_file"] = name
        if i % 17 != 5:  # a few products without a photo
            (img_dir / name).write_bytes(product_image(colour, shape, rng))
        rows.append(row)
    with (folder / "items.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    schema = {
        "files": ["items.csv"], "id": "sku", "id_type": "string" if sku else "int", "title": "name",
        "description": "", "added": "",
        "image": {"column": "image_file", "root": "photos", "pattern": ""} if image_column else
                 {"column": "", "root": "", "pattern": "pics/{id}.jpg"},
        "levels": levels, "label_path": {"column": "category_path" if path_column else "", "separator": " > "},
        "categorical": ["colour", "fit"] if metadata else [], "numeric": ["cost"] if metadata else [],
        "attributes": ["material", "pattern"] if attributes else [], "restates": [], "known_top": [],
        "allowed": {}, "ranges": {"cost": [0, 100000]} if metadata else {},
    }
    return folder, schema


def shaped_raw(tmp: Path, data: Path, schema: dict, extra: dict | None = None) -> dict:
    """Tiny params for a catalog of another shape: its schema, no floors, drift watching its own columns."""
    raw = tiny_raw(tmp, data, extra)
    raw["catalog"] = schema
    raw["registry"]["floors"] = {}
    raw["drift"]["categorical"] = list(schema["categorical"][:1])
    raw["drift"]["numeric"] = list(schema["numeric"])
    raw["train_retrieval"]["metadata_heads"] = list(schema["categorical"][:1])
    for stage in ("train_baseline", "train_fusion"):
        raw[stage]["train"]["level_weights"] = []  # the default for any depth
    return raw

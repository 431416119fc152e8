"""Stage validate: artifacts/ingest/ -> artifacts/validate/ (report.json, data_docs/).

The only module that touches Great Expectations. The suites are code; a failure raises
DataValidationError listing every failed expectation, so `dvc repro` stops before features.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.atomic_io import atomic_dir, write_json
from components.catalog import ID, TITLE
from components.config import CatalogSchema, Params, load_params
from components.web_assets import localize

log = logging.getLogger(__name__)

SPLITS = ["train", "val", "test"]


class DataValidationError(RuntimeError):
    """The data broke at least one expectation; the message lists every failure."""


@dataclass
class SuiteResult:
    name: str
    success: bool
    failures: list[str]
    statistics: dict


def _gx():
    # GX is slow to import (5-8 s) and chatty: import on use, with analytics and bars off.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    import great_expectations.expectations as gxe
    return gx, gxe


def product_expectations(schema: CatalogSchema, labeled: bool, max_missing_image_share: float,
                         rare_label: str = "") -> list:
    """Row-level expectations that hold for any batch of this catalog (training export or a new batch): the
    parts every product has, and the catalog schema's `allowed` values and numeric `ranges`."""
    _, gxe = _gx()
    exps = [
        gxe.ExpectColumnValuesToNotBeNull(column=ID),
        gxe.ExpectColumnValuesToBeUnique(column=ID),
        gxe.ExpectColumnValuesToBeOfType(column=ID, type_="int64" if schema.id_type == "int" else "str"),
        gxe.ExpectColumnValuesToBeOfType(column=TITLE, type_="str"),
        *(gxe.ExpectColumnValuesToBeInSet(column=col, value_set=list(values))
          for col, values in schema.allowed.items() if col not in schema.levels),
        # Missing numbers (NaN) pass: a product may lack a price, never have a negative one.
        *(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=lo, max_value=hi)
          for col, (lo, hi) in schema.ranges.items()),
        gxe.ExpectColumnValuesToBeInSet(column="has_image", value_set=[True, False]),
        # Share of products without an image, as the mean of the boolean column.
        gxe.ExpectColumnMeanToBeBetween(column="has_image", min_value=1.0 - max_missing_image_share,
                                        max_value=1.0),
    ]
    if labeled:
        exps += [gxe.ExpectColumnValuesToNotBeNull(column=lvl) for lvl in schema.levels]
        exps += [gxe.ExpectColumnValueLengthsToBeBetween(column=lvl, min_value=1) for lvl in schema.levels]
        # A top-level class under ingest.min_class_count is folded into the rare label, like any level.
        if schema.known_top:
            tops = [*schema.known_top, *([rare_label] if rare_label else [])]
            exps.append(gxe.ExpectColumnValuesToBeInSet(column=schema.levels[0], value_set=tops))
        exps += [gxe.ExpectColumnValuesToBeInSet(column=lvl, value_set=[*values, *([rare_label] if rare_label else [])])
                 for lvl, values in schema.allowed.items() if lvl in schema.levels]
    return exps


def curated_tables(df: pd.DataFrame, cache_shape: tuple, cache_dtype: str, params: Params) -> dict:
    """Derived one-row-per-thing tables for the dataset-level checks."""
    groups = df.groupby("group")["split"].nunique().rename("n_splits").reset_index()
    train = df[df["split"] == "train"]
    classes = pd.DataFrame([
        {"level": lvl, "label": lab, "train_rows": int((train[lvl] == lab).sum())}
        for lvl in params.catalog.levels for lab in sorted(df[lvl].unique())
    ], columns=["level", "label", "train_rows"])
    cache = pd.DataFrame([{
        "rows_table": len(df), "rows_cache": int(cache_shape[0]), "height": int(cache_shape[1]),
        "width": int(cache_shape[2]), "channels": int(cache_shape[3]), "dtype": cache_dtype,
    }])
    return {"groups": groups, "classes": classes, "cache": cache}


def curated_expectations(params: Params) -> dict[str, list]:
    _, gxe = _gx()
    p = params.ingest
    return {
        "groups": [gxe.ExpectColumnValuesToBeBetween(column="n_splits", min_value=1, max_value=1)],
        "classes": [gxe.ExpectColumnValuesToBeBetween(column="train_rows", min_value=1)],
        "cache": [
            gxe.ExpectColumnPairValuesToBeEqual(column_A="rows_table", column_B="rows_cache"),
            gxe.ExpectColumnValuesToBeInSet(column="height", value_set=[p.image_height]),
            gxe.ExpectColumnValuesToBeInSet(column="width", value_set=[p.image_width]),
            gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[3]),
            gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=["uint8"]),
        ],
        "splits": [gxe.ExpectColumnValuesToBeInSet(column="split", value_set=SPLITS),
                   gxe.ExpectTableRowCountToBeBetween(min_value=params.validate.min_rows)],
    }


def _describe_failure(res) -> str:
    cfg = res.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
    r = res.result or {}
    detail = []
    if "unexpected_count" in r:
        detail.append(f"{r['unexpected_count']} unexpected")
    if r.get("partial_unexpected_list"):
        detail.append(f"e.g. {r['partial_unexpected_list'][:5]}")
    if "observed_value" in r:
        detail.append(f"observed {r['observed_value']}")
    return f"{cfg.type} {kwargs}: {'; '.join(detail) or 'failed'}"


def run_suites(frames: dict[str, pd.DataFrame], suites: dict[str, list], docs_dir: Path | None
               ) -> list[SuiteResult]:
    """Validate each frame against its suite; optionally render GX Data Docs into docs_dir."""
    gx, _ = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        ctx.add_data_docs_site("local", {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    source = ctx.data_sources.add_pandas("catalog")
    results = []
    for name, exps in suites.items():
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=exps))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        res = vd.run(batch_parameters={"dataframe": frames[name]}, result_format="SUMMARY")
        failures = [f"[{name}] {_describe_failure(r)}" for r in res.results if not r.success]
        results.append(SuiteResult(name, bool(res.success), failures, dict(res.statistics)))
    if docs_dir is not None:
        ctx.build_data_docs(site_names=["local"])
        localize(docs_dir)  # the templates' CDN scripts and styles, served from the site itself
    return results


def validate_batch(frame: pd.DataFrame, schema: CatalogSchema, labeled: bool, max_missing_image_share: float,
                   docs_dir: Path | None = None) -> list[SuiteResult]:
    """The row-level suite alone, for a new catalog batch (drift and categorize DAGs)."""
    return run_suites({"products": frame},
                      {"products": product_expectations(schema, labeled, max_missing_image_share)}, docs_dir)


def run(params: Params) -> dict:
    src = Path(params.paths.ingest)
    df = pd.read_parquet(src / "products.parquet")
    cache = np.load(src / "images.npy", mmap_mode="r")
    frames = {"products": df, "splits": df[["split"]],
              **curated_tables(df, cache.shape, str(cache.dtype), params)}
    suites = {"products": product_expectations(params.catalog, True, params.validate.max_missing_image_share,
                                               params.ingest.rare_label),
              **curated_expectations(params)}
    with atomic_dir(params.paths.validate) as tmp:
        results = run_suites(frames, suites, tmp / "data_docs")
        failures = [f for r in results for f in r.failures]
        report = {
            "success": not failures,
            "failures": failures,
            "suites": {r.name: {"success": r.success, **r.statistics} for r in results},
        }
        write_json(tmp / "report.json", report)
        if failures:
            # The report stays next to the previous outputs for inspection; nothing downstream runs.
            write_json(Path(params.paths.validate).with_name("validate_failed.json"), report)
            raise DataValidationError(
                f"{len(failures)} expectation(s) failed on {src}:\n  - " + "\n  - ".join(failures)
                + "\nFix the export (or params.validate thresholds if the change is intended) and rerun."
            )
    log.info("validate: all %d suites passed", len(results))
    return report


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run(load_params())
    except DataValidationError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

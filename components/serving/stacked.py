"""The stacked categorizer: every trained expert plus the learned combiner (`models.combiner`).

Experts: the TF-IDF linear model (title + metadata tokens), the image-, text- and metadata-only towers and
the HUSE fusion network. Each gives class probabilities at every level; the combiner pools them by
how much each deserves trust on this product's input, over whole taxonomy paths. Embeddings (search,
retrieval) stay those of the fusion network's shared space.

A stack is described by `combiner.json`: the combiner, and the file name and md5 of every expert, so a
retrained expert cannot be paired with a combiner fitted to its predecessor.
"""
from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.atomic_io import read_json
from components.catalog import ATTRIBUTES, VARIANT_DEGRADES, degrade_frame, present, title_words
from components.checkpoint import CheckpointError, load_checkpoint
from components.data import Arrays
from components.encoders import Encoders
from components.experts import BY_NAME, NAMES, applies
from components.images import ImageBatch
from components.models.combiner import Combiner, StackInputs, input_conditions, path_log_probs
from components.models.quantize import quantize_image_tower
from components.models.runtime import PREDICT_BATCH, predict_many, prepare_for_inference, select_device
from components.models.tfidf import TfidfFileError, load_tfidf
from components.serving.categorizer import Categorizer, masked_embeddings, to_arrays

log = logging.getLogger(__name__)

EXPERTS = NAMES  # every expert the stack may pool, in their order (components.experts)
COMBINER_FILE = "combiner.json"
CALIBRATION_FILE = "calibration.npy"  # the int8 image towers' calibration images, beside the combiner
FORMAT = "deepfusion-stack/1"


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def metadata_fields(enc: Encoders) -> list[str]:
    return [*enc.categorical, *enc.numeric, ATTRIBUTES]


def degraded(frame: pd.DataFrame, images: ImageBatch, variant: str, enc: Encoders, cut_words: int
             ) -> tuple[pd.DataFrame, ImageBatch]:
    """The products as one of catalog.INPUT_VARIANTS (the evaluation's and the combiner's poor inputs)."""
    if variant == "no_image":
        return frame, ImageBatch(np.zeros_like(images.pixels), ["no_image"] * len(frame))
    return degrade_frame(frame, variant, metadata_fields(enc), cut_words), images


class Experts:
    """The loaded experts (any subset of EXPERTS, the fusion network required) and their shared encoders.
    `int8`: the experts whose image tower runs in int8 (`models.quantize`)."""

    def __init__(self, models: dict[str, object], encoders: Encoders, meta: dict, device: torch.device,
                 int8: tuple[str, ...] = ()) -> None:
        if "fusion" not in models:
            raise CheckpointError("the stacked categorizer needs the fusion network (search and embeddings)")
        self.models, self.encoders, self.meta, self.device = models, encoders, meta, device
        self.names = tuple(e for e in EXPERTS if e in models)
        self.int8 = int8

    @classmethod
    def load(cls, files: dict[str, Path], device: str = "auto", calibration: np.ndarray | None = None) -> Experts:
        """`calibration`: uint8 images (N, H, W, 3); given, the image towers run in int8 on CPU (a GPU keeps
        them in floating point: int8 kernels are CPU-only here, and the GPU has the throughput)."""
        dev = select_device(device)
        int8: list[str] = []
        models: dict[str, object] = {}
        encoders, meta = None, {}
        for name in EXPERTS:
            if name not in files:
                continue
            path = Path(files[name])
            if BY_NAME[name].linear:
                try:
                    models[name] = load_tfidf(path)
                except TfidfFileError as exc:
                    raise CheckpointError(f"the TF-IDF expert cannot be loaded: {exc}") from exc
                continue
            model, enc, m = load_checkpoint(path, dev)
            prepare_for_inference(model)
            if calibration is not None and dev.type == "cpu" and "image" in model.towers and \
                    quantize_image_tower(model.towers["image"], torch.from_numpy(calibration)):
                int8.append(name)
            if encoders is None:
                encoders = enc
            elif enc.to_dict() != encoders.to_dict():
                raise CheckpointError(f"{path}: the {name} expert was trained on other features than the rest "
                                      "(encoders differ); rerun `dvc repro` so every expert shares them")
            models[name] = model
            if name == "fusion":
                meta = m
        if encoders is None:
            raise CheckpointError("no neural expert given: the stacked categorizer needs at least the fusion network")
        return cls(models, encoders, meta, dev, tuple(int8))

    def n_classes(self) -> list[int]:
        return [len(v) for v in self.encoders.labels.values()]

    def reads(self, name: str) -> tuple[str, ...]:
        """The inputs (MODALITIES) an expert reads: a neural one's from its checkpoint, a linear one's from the
        registry (TF-IDF: the title and the metadata tokens)."""
        return BY_NAME[name].reads if BY_NAME[name].linear else tuple(self.models[name].cfg.modalities)

    def probs(self, frame: pd.DataFrame, a: Arrays, batch_size: int = PREDICT_BATCH, embeddings: bool = False,
              names: tuple[str, ...] | None = None) -> tuple[dict[str, list[np.ndarray]], dict[str, np.ndarray]]:
        """Per-level probabilities of `names` (default: every loaded expert), and the fusion network's
        embeddings when asked (the fusion network then runs even if its votes are not wanted)."""
        wanted = set(self.names if names is None else names) | ({"fusion"} if embeddings else set())
        linear = {e: m for e, m in self.models.items() if e in wanted and BY_NAME[e].linear}
        neural = {e: m for e, m in self.models.items() if e in wanted and e not in linear}
        # The linear experts are Python-bound (n-gram analysis), the networks run in torch kernels that release
        # the GIL: side by side they use the cores the convolutions leave idle.
        with ThreadPoolExecutor(max_workers=1) as pool:
            jobs = {e: pool.submit(m.predict_proba, frame, self.n_classes()) for e, m in linear.items()}
            res = predict_many(neural, a, batch_size, self.device, embeddings=("fusion",) if embeddings else ())
            out = {e: job.result() for e, job in jobs.items()}
        out.update({e: r["probs"] for e, r in res.items()})
        return {e: out[e] for e in self.names if e in out}, res.get("fusion", {}).get("embeddings", {})

    def on_variant(self, frame: pd.DataFrame, images: ImageBatch, variant: str, cut_words: int, paths: np.ndarray,
                   names: tuple[str, ...], full: dict[str, list[np.ndarray]] | None = None
                   ) -> tuple[Arrays, dict[str, list[np.ndarray]], StackInputs]:
        """The products as one input variant: model inputs, every expert's probabilities, the combiner's inputs.

        `full`: the experts' probabilities on the same products as given; an expert that does not read what
        the variant degrades (the image model when the title is cut) takes them instead of running again.
        """
        f, im = degraded(frame, images, variant, self.encoders, cut_words)
        a = to_arrays(f, im, self.encoders)
        same = {e for e in (full or {}) if e in self.names and VARIANT_DEGRADES[variant] not in self.reads(e)}
        fresh, _ = self.probs(f, a, names=tuple(e for e in self.names if e not in same))
        probs = {e: full[e] if e in same else fresh[e] for e in self.names}
        return a, probs, self.inputs(f, a, probs, paths, names)

    def inputs(self, frame: pd.DataFrame, a: Arrays, probs: dict[str, list[np.ndarray]], paths: np.ndarray,
               names: tuple[str, ...]) -> StackInputs:
        """What the combiner sees: path log-probs of `names`, which of them apply, and the input conditions."""
        words, has_meta = title_words(frame), present(frame, metadata_fields(self.encoders))
        inputs = {"image": a.has_image, "text": words > 0, "metadata": has_meta}
        logp = np.stack([path_log_probs(probs[e], paths) for e in names], axis=1)
        mask = np.stack([applies(e, inputs, len(frame)) for e in names], axis=1).astype(np.float32)
        return StackInputs(logp, mask, input_conditions(words, a.has_image, has_meta))


class StackedCategorizer(Categorizer):
    """The categorizer we serve: experts + combiner; `model` stays the fusion network (embeddings)."""

    def __init__(self, experts: Experts, combiner: Combiner, image_size: tuple[int, int]) -> None:
        super().__init__(experts.models["fusion"], experts.encoders, {**experts.meta, "stack": combiner.experts},
                         experts.device, image_size)
        missing = [e for e in combiner.experts if e not in experts.models]
        if missing:
            raise CheckpointError(f"the combiner was fitted with expert(s) {', '.join(missing)} that are not loaded")
        self.experts, self.combiner = experts, combiner

    @classmethod
    def load(cls, combiner_file: str | Path, files: dict[str, Path] | None = None, device: str = "auto",
             candidates: bool = False, int8: bool = True) -> StackedCategorizer:
        """A stack from its combiner.json; expert files from `files` (MLflow artifacts) or the paths it records.

        Loads the experts serving needs, or with `candidates` every expert the stack stage chose from (the
        evaluation compares them all). Every expert file must have the md5 the combiner was fitted with.
        A stack fitted on int8 image towers runs them in int8 on CPU, as fitted; `int8=False` keeps them fp32
        (the benchmark's reference).
        """
        combiner_file = Path(combiner_file)
        try:
            spec = read_json(combiner_file)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{combiner_file}: not a readable stacked categorizer ({exc}); rerun "
                                  "`dvc repro stack`") from exc
        if spec.get("format") != FORMAT:
            raise CheckpointError(f"{combiner_file}: not a {FORMAT} file (found {spec.get('format')!r})")
        combiner = Combiner.from_dict(spec["combiner"])
        needed = tuple(e for e in EXPERTS if e in spec["files"]) if candidates else served_experts(combiner)
        missing = [e for e in needed if e not in (files or spec["files"])]
        if missing:
            raise CheckpointError(f"{combiner_file}: no file given for the {', '.join(missing)} expert(s) the stack "
                                  "needs; rerun `dvc repro stack`")
        found = {e: Path(files[e]) if files else Path(spec["files"][e]) for e in needed}
        for e, path in found.items():
            if not path.is_file():
                raise CheckpointError(f"{path}: the {e} expert of {combiner_file} is missing; restore it "
                                      "(`dvc pull`) or rerun `dvc repro`")
            if file_md5(path) != spec["md5"][e]:
                raise CheckpointError(f"{path}: the {e} expert differs from the one {combiner_file} was fitted "
                                      "with (md5 mismatch); rerun `dvc repro stack`")
        calibration = stack_calibration(combiner_file, spec, files) if int8 else None
        experts = Experts.load(found, device, calibration)
        return cls(experts, combiner, tuple(experts.meta.get("image_size", (80, 64))))

    def predict(self, frame: pd.DataFrame, images: ImageBatch, batch_size: int = PREDICT_BATCH,
                embeddings: bool = False) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        a = to_arrays(frame, images, self.encoders)
        probs, embs = self.experts.probs(frame, a, batch_size, embeddings, self.combiner.experts)
        x = self.experts.inputs(frame, a, probs, self.combiner.paths, self.combiner.experts)
        marginals, best = self.combiner.predict(x, self.experts.n_classes())
        return self.table(frame, images, marginals, best), masked_embeddings(embs, a)


def stack_calibration(combiner_file: Path, spec: dict, files: dict[str, Path] | None = None) -> np.ndarray | None:
    """The calibration images a stack's int8 image towers were fitted with (None: an fp32 stack), from
    `files["calibration"]` (MLflow artifacts) or beside combiner.json."""
    if not spec.get("int8"):
        return None
    path = Path(files["calibration"]) if files and "calibration" in files else \
        combiner_file.parent / spec["int8"]["calibration"]
    if not path.is_file():
        raise CheckpointError(f"{path}: the int8 calibration images of {combiner_file} are missing; restore them "
                              "(`dvc pull`) or rerun `dvc repro stack`")
    if file_md5(path) != spec["int8"]["md5"]:
        raise CheckpointError(f"{path}: not the calibration images {combiner_file} was fitted with (md5 mismatch); "
                              "rerun `dvc repro stack`")
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable calibration images ({exc}); rerun `dvc repro stack`") from exc
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise CheckpointError(f"{path}: expected uint8 images (N, H, W, 3), found {images.dtype} {images.shape}; "
                              "rerun `dvc repro stack`")
    return images


def served_experts(combiner: Combiner) -> tuple[str, ...]:
    """The experts a stack needs at serving: the combiner's, plus the fusion network for embeddings."""
    return tuple(e for e in EXPERTS if e in combiner.experts or e == "fusion")


def is_stack(path: str | Path) -> bool:
    p = Path(path)
    return p.name == COMBINER_FILE or (p / COMBINER_FILE).is_file()


def stack_file(path: str | Path) -> Path:
    p = Path(path)
    return p if p.name == COMBINER_FILE else p / COMBINER_FILE

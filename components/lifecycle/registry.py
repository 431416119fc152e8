"""MLflow model registry workflow: register, promote (gate), rollback, status.

    deepfusion registry register   # publish (lifecycle.publish), new version of the model, @challenger
    deepfusion registry promote    # re-score challenger and champion, move @champion if better
    deepfusion registry rollback   # @champion back to the previous champion
    deepfusion registry status
(`python -m components.registry ...` is the same command.)

The gate's decision is a pure function (`decide`); every decision is recorded as tags on the version.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from components import mlflow_store as store
from components.atomic_io import read_json
from components.checkpoint import CheckpointError
from components.config import Params, RegistryParams, load_params, params_to_dict
from components.data import cached_products
from components.images import ImageBatch
from components.lifecycle.provenance import data_md5, git_commit, locked_outputs, recipe_md5, run_overrides_tag
from components.lifecycle.publish import PublishError, served, served_model_uri
from components.metrics import classification
from components.mlflow_store import MAX_TAG_CHARS, RECIPE_TAG, RegistryError
from components.models.retrieval import towers_file
from components.serving.mlflow_model import ARTIFACT_MD5_TAG, artifact_md5, load_categorizer_uri, serving_columns

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
REFERENCE_TAG = "reference_data"  # {ingest output path: DVC md5} of the data the version was trained on
REFERENCE_FILES = ("products.parquet", "images.npy")  # what drift compares a batch with


@dataclass
class Decision:
    promote: bool
    reason: str


def decide(challenger: dict[str, float], champion: dict[str, float] | None, validation_passed: bool,
           p: RegistryParams) -> Decision:
    """The promotion gate on macro-F1 per level, both models scored on the same evaluation data."""
    if not validation_passed:
        return Decision(False, "data validation did not pass for the challenger's training data")
    levels, finest = list(challenger), list(challenger)[-1]  # scores come coarsest level first
    floors = {lvl: p.floors.get(lvl, 0.0) for lvl in levels}  # a level without a floor has none
    below = [f"{lvl} {challenger[lvl]:.4f} < floor {floors[lvl]:.4f}" for lvl in levels
             if challenger[lvl] < floors[lvl]]
    if below:
        return Decision(False, "below absolute floors: " + "; ".join(below))
    if champion is None:
        return Decision(True, "first model meeting the floors becomes champion")
    if set(champion) != set(challenger):
        return Decision(False, f"the champion predicts levels {list(champion)}, the challenger {levels}: a new "
                               "taxonomy is registered under a new model name (registry.model_name)")
    gain = challenger[finest] - champion[finest]
    if gain < p.min_gain:
        return Decision(False, f"{finest} macro-F1 gain {gain:+.4f} < required {p.min_gain:+.4f}")
    regressed = [f"{lvl} {challenger[lvl] - champion[lvl]:+.4f}" for lvl in levels
                 if champion[lvl] - challenger[lvl] > p.max_level_regression]
    if regressed:
        return Decision(False, "regresses beyond tolerance: " + "; ".join(regressed))
    return Decision(True, f"{finest} macro-F1 gain {gain:+.4f} >= {p.min_gain:+.4f}, no level regressed")


def evaluation_data(params: Params) -> tuple[pd.DataFrame, ImageBatch]:
    """The pipeline's test split, raw rows plus cached images: both models are re-scored on it."""
    split = pd.read_parquet(Path(params.paths.ingest) / "products.parquet", columns=["split"])["split"]
    return cached_products(params.paths.ingest, np.flatnonzero(split.to_numpy() == "test"))


def rescore(params: Params, version: str, data: tuple[pd.DataFrame, ImageBatch]) -> dict[str, float]:
    cat = load_categorizer_uri(store.model_uri(params.registry.model_name, version), params)
    frame, images = data
    pred, _ = cat.predict(frame, images)
    return {lvl: classification(frame[lvl].to_numpy(), pred[lvl].to_numpy())["macro_f1"] for lvl in cat.levels}


def champion_scores(params: Params, c, champ: str, chal_tags: dict[str, str],
                    data: tuple[pd.DataFrame, ImageBatch]) -> tuple[dict[str, float], str]:
    """Re-score the champion; a champion this code cannot load (an older checkpoint format) is judged by
    the test macro-F1 recorded at its registration, but only on the same data version as the challenger."""
    name = params.registry.model_name
    try:
        return rescore(params, champ, data), "rescored"
    except CheckpointError as exc:
        tags = store.version_tags(c, name, champ)
        levels = params.catalog.levels
        keys = [f"test_{lvl}_macro_f1" for lvl in levels]
        if all(k in tags for k in keys) and tags.get("data_md5") and tags["data_md5"] == chal_tags.get("data_md5"):
            log.warning("@%s v%s cannot be re-scored (%s); using its recorded test scores", CHAMPION, champ, exc)
            return {lvl: float(tags[k]) for lvl, k in zip(levels, keys)}, f"recorded at registration ({exc})"
        raise RegistryError(f"@{CHAMPION} v{champ} cannot be loaded by this code ({exc}) and has no recorded "
                            "test scores on the challenger's data version; compare them by hand and move the "
                            "alias with `mlflow` if the challenger is better") from exc


def private_lock_dir() -> Path:
    """This user's own lock folder (0700) in the temp dir. A shared, predictable /tmp name let another user of
    the host pre-create the lock (blocking every promotion, or pointing a symlink elsewhere), and a lock file left
    by root was unopenable for the platform's unprivileged service user."""
    folder = Path(tempfile.gettempdir()) / f"deepfusion-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RegistryError(f"{folder}: not a private folder of this user (owner uid {info.st_uid}, mode "
                            f"{stat.S_IMODE(info.st_mode):o}); remove it or set TMPDIR to a private folder")
    return folder


@contextlib.contextmanager
def promotion_lock(params: Params) -> Iterator[None]:
    """Serialise promotions on this host; the alias compare-and-set below guards across hosts."""
    key = hashlib.sha1(store.tracking_uri(params).encode()).hexdigest()[:12]
    fd = os.open(private_lock_dir() / f"promote-{key}.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


REVIEW_PRECISION = 0.99  # auto-accept a prediction when its confidence reached this precision on test


def auto_accept_threshold(evaluation: dict, target: float = REVIEW_PRECISION, default: float = REVIEW_PRECISION
                          ) -> float:
    """Confidence above which the served model (the fusion network for evaluations that predate the stack)
    reached the target precision on the test split; `default` when the evaluation does not say."""
    for name in (evaluation.get("served_model"), "fusion"):
        business = evaluation.get(name or "", {}).get("business", {})
        if f"threshold_at_{target:g}" in business:
            return float(business[f"threshold_at_{target:g}"])
    return default


def model_text(levels: tuple[str, ...]) -> str:
    """The registered model's description."""
    return (f"Predicts a catalog product's category at every level ({' > '.join(levels)}) "
            "from its image, title and structured metadata, any of which may be missing. Each version's "
            "description is its model card; @champion serves, @challenger waits for the promotion gate.")


def model_card(evaluation: dict, tags: dict[str, str], levels: tuple[str, ...]) -> str:
    """A version's description: what it is, what it learned from, how it scores on the inputs users have, and
    its known limits. Every figure comes from the evaluate stage's metrics of the registered model."""
    served_name = evaluation.get("served_model", "fusion")
    inputs = evaluation.get("inputs", {})
    rows = [f"- {view}: {100 * row[served_name]['accuracy']:.1f} % / {100 * row[served_name]['macro_f1']:.1f}"
            for view, row in inputs.items() if served_name in row]
    test = evaluation.get(served_name, {})
    by_level = ", ".join(f"{lvl} {100 * test[lvl]['accuracy']:.1f} %" for lvl in levels if lvl in test)
    return "\n".join([
        f"**{served_name}** categorizer, trained on catalog data version `{tags.get('data_md5') or 'unknown'}` "
        f"(code `{(tags.get('git_commit') or 'unknown')[:12]}`).",
        "",
        f"Test split ({evaluation.get('test_products', '?')} products never used for tuning), accuracy by "
        f"level: {by_level or 'not recorded'}.",
        "",
        f"{levels[-1]} accuracy / macro-F1 on each input as users have it:",
        *(rows or ["- not recorded"]),
        "",
        f"Known limits: a {levels[-1]} absent from the training catalog is filed under the nearest known one "
        "(drift reports count such products); classes with fewer than the ingest minimum were folded into "
        "Other; image-only predictions are much weaker than those with a title.",
    ])


class Trail(Protocol):
    """Where the registry's changes are also recorded for services that cannot reach the registry (the review
    station in compose: components.orchestration.champion_run.Trail)."""

    def version(self, model: str, version: str) -> bool: ...

    def champion(self, model: str, version: str | None) -> bool: ...


def register(params: Params, trail: Trail | None = None) -> str:
    model = served(params).model
    if not model.is_file():
        raise RegistryError(f"{model} not found; run `dvc repro` first")
    evaluation = read_json(Path(params.paths.evaluate) / "metrics.json")
    validation = read_json(Path(params.paths.validate) / "report.json")
    test = evaluation[evaluation.get("served_model", "fusion")]
    tags = {
        "data_md5": data_md5(), "git_commit": git_commit(), "validation_passed": str(validation["success"]),
        RECIPE_TAG: recipe_md5([model]),
        **{f"test_{lvl}_macro_f1": f"{test[lvl]['macro_f1']:.4f}" for lvl in params.catalog.levels},
        **{f"test_{lvl}_accuracy": f"{test[lvl]['accuracy']:.4f}" for lvl in params.catalog.levels},
        "served_model": evaluation.get("served_model", "fusion"),
        # What a worker checks every downloaded artifact against before it loads the model.
        ARTIFACT_MD5_TAG: json.dumps(artifact_md5(model, params.catalog,
                                                  serving_columns(params.catalog, params.paths.ingest),
                                                  towers_file(params.paths.train_retrieval)),
                                     sort_keys=True),
        # Its training data as the run's DVC lock recorded it: a drift report on a worker that shares no disk
        # with that run pulls it from the DVC remote by these md5s.
        REFERENCE_TAG: json.dumps(locked_outputs([Path(params.paths.ingest) / f for f in REFERENCE_FILES]),
                                  sort_keys=True),
        # The categorize DAG's review cut-off travels with the version it belongs to.
        "auto_accept_threshold": f"{auto_accept_threshold(evaluation):.6f}",
        "run_overrides": run_overrides_tag()[:MAX_TAG_CHARS],
        "params": json.dumps({"model": params_to_dict(params.model), "train_fusion": params_to_dict(
            params.train_fusion), "stack": params_to_dict(params.stack)})[:MAX_TAG_CHARS],
    }
    with store.registry_errors(params, "register"):
        # Publishing is idempotent (keyed by the outputs' md5) and so is registering a run's model: a retried
        # task or a second `register` of the same checkpoint returns the version it already made, and so does a
        # rerun of the same recipe (data, params, code) whose floats came out differently (another CPU's order).
        run_id, uri = served_model_uri(params)
        version = store.register_model(params, uri, run_id, tags)
        if trail is not None:  # before any alias names it: a service without the run's disk finds it so
            trail.version(params.registry.model_name, version)
        c = store.client(params)
        store.describe(c, params.registry.model_name, version, model_text(params.catalog.levels),
                       model_card(evaluation, tags, params.catalog.levels))
        if store.alias_version(c, params.registry.model_name, CHAMPION) == version:
            # A retried or repeated register of the model that already won: nothing to judge.
            print(f"{params.registry.model_name} v{version} is already @{CHAMPION}")
            return version
        store.set_alias(c, params.registry.model_name, CHALLENGER, version)
    print(f"registered {params.registry.model_name} v{version} as @{CHALLENGER}")
    return version


def promote(params: Params, trail: Trail | None = None) -> Decision:
    """The gate on @challenger; then the trail is made to name @champion whatever the outcome (a rerun after a
    failed write mends it)."""
    name = params.registry.model_name
    with promotion_lock(params):  # the trail too: two promotions on this host cannot cross their writes
        decision = _judge(params)
        if trail is not None:
            with store.registry_errors(params, "promote"):
                champ = store.alias_version(store.client(params), name, CHAMPION)
            trail.champion(name, champ)
    return decision


def _judge(params: Params) -> Decision:
    name = params.registry.model_name
    with store.registry_errors(params, "promote"):
        c = store.client(params)
        chal = store.alias_version(c, name, CHALLENGER)
        champ = store.alias_version(c, name, CHAMPION)
        if chal is None and champ is None:
            raise RegistryError(f"{name} has no @{CHALLENGER}; run `python -m components.registry register`")
        if chal is None:  # the last challenger was promoted (or rolled back): a rerun of the gate is a no-op
            print(f"no @{CHALLENGER} to judge; @{CHAMPION} is v{champ}")
            return Decision(False, f"no @{CHALLENGER}; v{champ} is @{CHAMPION}")
        if champ == chal:
            store.delete_alias(c, name, CHALLENGER)
            return Decision(False, f"v{chal} is already @{CHAMPION}")
        rolled_back = store.version_tags(c, name, chal).get("rolled_back")
        if rolled_back:
            reason = f"v{chal} was rolled back ({rolled_back}); register a new model instead"
            store.set_version_tags(c, name, chal, {"promotion_decision": "rejected", "promotion_reason": reason})
            print(f"v{chal} kept out of @{CHAMPION}: {reason}")
            return Decision(False, reason)
        data = evaluation_data(params)
        chal_scores = rescore(params, chal, data)
        chal_tags = store.version_tags(c, name, chal)
        champ_scores, source = champion_scores(params, c, champ, chal_tags, data) if champ else (None, "none")
        passed = chal_tags.get("validation_passed", "False") == "True"
        decision = decide(chal_scores, champ_scores, passed, params.registry)
        # Compare-and-set: another promotion may have moved the champion while we were scoring.
        if store.alias_version(c, name, CHAMPION) != champ:
            raise RegistryError(f"@{CHAMPION} moved while v{chal} was being evaluated; nothing changed, rerun")
        record = {"promotion_decision": "promoted" if decision.promote else "rejected",
                  "promotion_reason": decision.reason, "compared_with": champ or "none",
                  "rescored_macro_f1": json.dumps({k: round(v, 4) for k, v in chal_scores.items()}),
                  "champion_rescored_macro_f1": json.dumps(
                      {k: round(v, 4) for k, v in (champ_scores or {}).items()}),
                  "champion_scores_source": source[:MAX_TAG_CHARS]}
        if decision.promote:
            record["previous_champion"] = champ or ""
        store.set_version_tags(c, name, chal, record)
        if decision.promote:
            store.set_alias(c, name, CHAMPION, chal)
            store.delete_alias(c, name, CHALLENGER)  # it is the champion now; nothing is waiting to be judged
    verb = "promoted to" if decision.promote else "kept out of"
    print(f"v{chal} {verb} @{CHAMPION}: {decision.reason}")
    return decision


def rollback(params: Params, trail: Trail | None = None) -> str:
    name = params.registry.model_name
    with promotion_lock(params), store.registry_errors(params, "rollback"):
        c = store.client(params)
        champ = store.alias_version(c, name, CHAMPION)
        if champ is None:
            raise RegistryError(f"{name} has no @{CHAMPION} to roll back")
        prev = store.version_tags(c, name, champ).get("previous_champion", "")
        if not prev:
            raise RegistryError(f"v{champ} has no previous champion recorded; set the alias by hand if needed")
        store.set_alias(c, name, CHAMPION, prev)
        store.set_version_tags(c, name, champ, {"rolled_back": f"champion returned to v{prev}"})
        if store.alias_version(c, name, CHALLENGER) == champ:  # the gate refuses it anyway; do not leave it waiting
            store.delete_alias(c, name, CHALLENGER)
        if trail is not None:
            trail.champion(name, prev)
    print(f"@{CHAMPION}: v{champ} -> v{prev}")
    return prev


def status(params: Params) -> list[dict]:
    with store.registry_errors(params, "status"):
        versions = store.list_versions(store.client(params), params.registry.model_name)
    for v in versions:
        t = v["tags"]
        print(f"v{v['version']:>3} {','.join('@' + a for a in v['aliases']):<24} "
              f"articleType macro-F1 {t.get('test_articleType_macro_f1', '?'):<7} "
              f"{t.get('promotion_decision', '')} {t.get('promotion_reason', '')}")
    if not versions:
        print(f"no versions of {params.registry.model_name}")
    return versions


COMMANDS = {"register": register, "promote": promote, "rollback": rollback, "status": status}


HELP = {"register": "publish the pipeline's outputs to MLflow and register the served model as @challenger",
        "promote": "re-score @challenger and @champion on the same test split; move @champion past the gate",
        "rollback": "move @champion back to the previous champion",
        "status": "list the model's versions with aliases, scores and gate decisions"}


def main(argv: list[str] | None = None, trail: Trail | None = None) -> int:
    """`deepfusion registry ...`; `trail`: what the deployment records beside the registry (the CLI passes the
    artifact store's, components.cli)."""
    import argparse

    ap = argparse.ArgumentParser(prog="deepfusion registry", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS:
        sub.add_parser(name, help=HELP[name], description=HELP[name])
    args = ap.parse_args(argv)  # before the params: --help works anywhere
    logging.basicConfig(level=logging.WARNING)
    try:
        params = load_params()
        if args.command == "status":
            status(params)
        else:
            COMMANDS[args.command](params, trail)
    except (RegistryError, PublishError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

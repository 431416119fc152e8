"""Registry workflow against a real MLflow SQLite backend in a temp dir: register, gate, rollback, serve."""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from components import mlflow_store as store
from components.config import RegistryParams
from components.lifecycle import registry
from components.lifecycle.registry import Decision, decide
from components.mlflow_store import RegistryError
from components.serving.mlflow_model import load_categorizer_uri
from components.serving.stacked import StackedCategorizer, file_md5
from tests.conftest import ROOT

P = RegistryParams(model_name="m", min_gain=0.01, max_level_regression=0.005,
                   floors={"masterCategory": 0.9, "subCategory": 0.8, "articleType": 0.7})


def scores(m, s, a):
    return {"masterCategory": m, "subCategory": s, "articleType": a}


@pytest.mark.parametrize("chal, champ, passed, promote, why", [
    (scores(0.95, 0.9, 0.8), None, True, True, "first model"),
    (scores(0.95, 0.9, 0.6), None, True, False, "below absolute floors"),
    (scores(0.95, 0.9, 0.8), None, False, False, "validation"),
    (scores(0.95, 0.9, 0.805), scores(0.95, 0.9, 0.8), True, False, "gain +0.0050"),
    (scores(0.95, 0.88, 0.85), scores(0.95, 0.9, 0.8), True, False, "subCategory -0.0200"),
    (scores(0.95, 0.897, 0.85), scores(0.95, 0.9, 0.8), True, True, "no level regressed"),
])
def test_gate_decisions(chal, champ, passed, promote, why):
    d = decide(chal, champ, passed, P)
    assert d.promote is promote and why in d.reason


@pytest.fixture
def reg(trained, tmp_path_factory):
    """The trained model's params with an MLflow store of its own: no test sees another's registry."""
    params, data, _ = trained
    db = tmp_path_factory.mktemp("registry") / "mlflow.db"
    return dataclasses.replace(params, paths=dataclasses.replace(params.paths, mlflow_db=str(db)))


def with_other_checkpoint(params, tmp_path: Path, seed: int):
    """Params whose fusion checkpoint (and the stack around it) is a copy of the trained one with other
    metadata: same scores, other files, hence another published run and model version."""
    import torch

    from components.checkpoint import fusion_checkpoint

    src = fusion_checkpoint(params.paths.train_fusion)
    dst_dir = tmp_path / f"train_fusion_{seed}"
    dst = fusion_checkpoint(dst_dir)
    dst.parent.mkdir(parents=True)
    blob = torch.load(src, weights_only=True)
    torch.save({**blob, "meta": {**blob["meta"], "seed": seed}}, dst)
    shutil.copy(Path(params.paths.train_fusion) / "metrics.json", dst_dir / "metrics.json")
    stack_dir = tmp_path / f"stack_{seed}"
    stack_dir.mkdir()
    spec = json.loads((Path(params.paths.stack) / "combiner.json").read_text())
    spec["files"]["fusion"], spec["md5"]["fusion"] = str(dst), file_md5(dst)
    (stack_dir / "combiner.json").write_text(json.dumps(spec))
    shutil.copy(Path(params.paths.stack) / "calibration.npy", stack_dir / "calibration.npy")
    shutil.copy(Path(params.paths.stack) / "metrics.json", stack_dir / "metrics.json")
    return dataclasses.replace(params, paths=dataclasses.replace(params.paths, train_fusion=str(dst_dir),
                                                                 stack=str(stack_dir)))


@pytest.fixture(autouse=True)
def project(tmp_path, monkeypatch) -> Path:
    """Register, promote and rollback run in a pipeline result's folder (the DAG's run workspace): here one with a
    DVC remote `artifacts` of its own, where the trail's champion pointer goes (never the repo's remote)."""
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text(f"['remote \"artifacts\"']\n    url = {tmp_path / 'remote'}\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    for name in ("data.dvc", "params.yaml"):  # the catalog version the tags name; the project's params
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pointed(params) -> str | None:
    """The version the champion pointer in the artifact store names (what the review station in compose shows)."""
    from components.orchestration import champion_run

    return (champion_run.champion_pointer(Path.cwd(), params.registry.model_name) or {}).get("version")


def aliases(params) -> dict[str, str | None]:
    c = store.client(params)
    return {a: store.alias_version(c, params.registry.model_name, a) for a in ("champion", "challenger")}


def test_register_promote_refuse_rollback(reg, capsys, tmp_path, project):
    from components.orchestration.champion_run import Trail

    trail = Trail(project)  # what the retrain DAG and `deepfusion registry` hand the registry
    with pytest.raises(RegistryError, match="no @challenger"):
        registry.promote(reg, trail)
    v1 = registry.register(reg, trail)
    tags = store.version_tags(store.client(reg), reg.registry.model_name, v1)
    assert tags["validation_passed"] == "True" and "test_articleType_macro_f1" in tags and "params" in tags
    assert aliases(reg) == {"champion": None, "challenger": v1}
    assert registry.promote(reg, trail).promote  # first model meeting the floors
    assert aliases(reg) == {"champion": v1, "challenger": None}  # nothing left waiting to be judged
    assert pointed(reg) == v1
    assert not registry.promote(reg, trail).promote  # a rerun of the gate is a no-op

    assert registry.register(reg, trail) == v1  # the same checkpoint again: the same version, not a duplicate
    assert aliases(reg) == {"champion": v1, "challenger": None}  # ...and not a challenger of itself
    other = with_other_checkpoint(reg, tmp_path, seed=1)
    v2 = registry.register(other, trail)  # another checkpoint with the same weights: re-scored equal, so no gain
    assert v2 != v1
    d = registry.promote(reg, trail)
    assert not d.promote and "gain +0.0000" in d.reason
    assert aliases(reg) == {"champion": v1, "challenger": v2}
    assert store.version_tags(store.client(reg), reg.registry.model_name, v2)["promotion_decision"] == \
        "rejected"
    assert pointed(reg) == v1

    eager = dataclasses.replace(reg, registry=dataclasses.replace(reg.registry, min_gain=-1.0))
    assert registry.promote(eager, trail).promote
    assert aliases(reg)["champion"] == v2
    assert aliases(reg) == {"champion": v2, "challenger": None} and pointed(reg) == v2
    assert registry.rollback(reg, trail) == v1 and aliases(reg) == {"champion": v1, "challenger": None}
    assert pointed(reg) == v1
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(reg, trail)
    assert registry.register(other, trail) == v2 and aliases(reg)["challenger"] == v2  # the bad model, registered again
    d = registry.promote(eager, trail)  # the gate refuses a rolled-back version whatever its scores
    assert not d.promote and "was rolled back" in d.reason and aliases(reg)["champion"] == v1 == pointed(reg)
    versions = registry.status(reg)
    assert [v["version"] for v in versions][:2] == [v1, v2]
    assert "@champion" in capsys.readouterr().out


def test_a_rerun_of_the_same_recipe_is_the_version_it_already_made(reg, tmp_path, monkeypatch):
    """Issue 44: a forced retrain of the same data, params and code whose floats came out otherwise (another
    worker's summation order) is not a new version; other code is."""
    import yaml

    from components.lifecycle.publish import served

    own = dataclasses.replace(reg, registry=dataclasses.replace(reg.registry, model_name="recipe"))

    def pipeline_result(params, code_md5: str):
        model = served(params).model
        stage = {"cmd": "python -m components.pipeline.stack", "params": {"params.yaml": {"seed": 1}},
                 "deps": [{"path": "components/pipeline/stack.py", "md5": code_md5},
                          {"path": str(model.parent / "input.npz"), "md5": "made-by-the-run"}],
                 "outs": [{"path": str(model), "md5": file_md5(model)}, {"path": str(model.parent / "input.npz"),
                                                                        "md5": "made-by-the-run"}]}
        (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"stack": stage}}))
        return params

    v1 = registry.register(pipeline_result(own, "code-1"))
    assert store.version_tags(store.client(own), "recipe", v1)[store.RECIPE_TAG]
    rerun = with_other_checkpoint(own, tmp_path, seed=2)  # other bytes, one recipe
    assert registry.register(pipeline_result(rerun, "code-1")) == v1
    changed = with_other_checkpoint(own, tmp_path, seed=3)
    v3 = registry.register(pipeline_result(changed, "code-2"))  # other code: a model of its own
    assert v3 != v1
    (tmp_path / "dvc.lock").unlink()  # no pipeline behind it: no recipe, never matched
    assert registry.register(with_other_checkpoint(own, tmp_path, seed=4)) not in (v1, v3)


def test_champion_in_an_older_checkpoint_format_is_judged_by_its_recorded_scores(reg, tmp_path):
    from urllib.parse import urlparse

    import torch

    # A champion registered by an earlier release: its stored checkpoint says format /1.
    v_old = registry.register(with_other_checkpoint(reg, tmp_path, seed=11))
    c = store.client(reg)
    model_id = c.get_model_version(reg.registry.model_name, v_old).source.removeprefix("models:/")
    stored = next(Path(urlparse(c.get_logged_model(model_id).artifact_location).path).rglob("model.pt"))
    blob = torch.load(stored, weights_only=True)
    torch.save({**blob, "format": "deepfusion-checkpoint/1"}, stored)
    store.set_alias(c, reg.registry.model_name, "champion", v_old)
    v_new = registry.register(with_other_checkpoint(reg, tmp_path, seed=12))
    eager = dataclasses.replace(reg, registry=dataclasses.replace(reg.registry, min_gain=-1.0))
    assert registry.promote(eager).promote
    tags = store.version_tags(c, reg.registry.model_name, v_new)
    assert tags["champion_scores_source"].startswith("recorded at registration")
    assert aliases(reg)["champion"] == v_new
    # Without recorded scores on the same data version the gate refuses to guess.
    store.set_version_tags(c, reg.registry.model_name, v_old, {"data_md5": "another-version"})
    store.set_alias(c, reg.registry.model_name, "champion", v_old)
    registry.register(reg)
    with pytest.raises(RegistryError, match="cannot be loaded by this code"):
        registry.promote(eager)
    store.set_alias(c, reg.registry.model_name, "champion", v_new)


def test_load_by_alias_and_predict(reg, trained, tmp_path):
    from components.serving import predict

    _, data, _ = trained
    registry.register(reg)
    registry.promote(reg)
    os.environ["MLFLOW_TRACKING_URI"] = store.tracking_uri(reg)
    try:
        cat = load_categorizer_uri(f"models:/{reg.registry.model_name}@champion", reg)
        pred, _ = predict.categorize(data, cat, progress=False)
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    chosen = json.loads((Path(reg.paths.stack) / "combiner.json").read_text())["combiner"]["experts"]
    assert isinstance(cat, StackedCategorizer) and list(cat.combiner.experts) == chosen
    assert len(pred) == 180 and (pred["status"] != "").all()
    stack = StackedCategorizer.load(Path(reg.paths.stack) / "combiner.json")
    local, _ = predict.categorize(data, stack, progress=False)
    pd.testing.assert_frame_equal(pred, local)  # the registered model is the pipeline's stack
    # It carries search's retrieval towers (checked against its fusion network when it loaded).
    from components.models.retrieval import load_towers, towers_file
    from components.serving.search import find_towers

    carried = find_towers(cat, None)
    assert carried is not None and carried.key() == load_towers(towers_file(reg.paths.train_retrieval)).key()


def stored_model_dir(params, version: str) -> Path:
    from urllib.parse import urlparse

    c = store.client(params)
    model_id = c.get_model_version(params.registry.model_name, version).source.removeprefix("models:/")
    return Path(urlparse(c.get_logged_model(model_id).artifact_location).path)


def test_a_registry_writer_cannot_run_code_on_the_workers(reg, trained, tmp_path, capsys):
    """Issue 39.1: the stored entry file and package copy are replaced by code that writes a file. Loading the
    champion for predict (the path of the predict CLI and of the DAGs' tasks) runs the installed package and
    fetches only data, so nothing is written; a changed weight file is refused by its recorded md5."""
    from components.serving import predict

    _, data, _ = trained
    version = registry.register(reg)
    registry.promote(reg)
    stored = stored_model_dir(reg, version)
    marker = tmp_path / "pwned"
    payload = f"\nimport pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n"
    entry = next(stored.rglob("mlflow_entry.py"))
    entry.write_text(entry.read_text() + payload)
    for init in stored.rglob("components/__init__.py"):
        init.write_text(init.read_text() + payload)
    os.environ["MLFLOW_TRACKING_URI"] = store.tracking_uri(reg)
    try:
        rc = predict.main([str(data), "--output", str(tmp_path / "p.csv"), "--model",
                           f"models:/{reg.registry.model_name}@champion"])
        assert rc == 0 and not marker.exists()
        assert len(pd.read_csv(tmp_path / "p.csv")) == 180
        combiner = next(stored.rglob("combiner.json"))
        spec = json.loads(combiner.read_text())
        spec["combiner"]["bias"] = [0.0 for _ in spec["combiner"]["bias"]]  # bad weights, not code
        combiner.write_text(json.dumps(spec))
        os.environ["DEEPFUSION_MODEL_CACHE"] = str(tmp_path / "new-worker")  # one that has not cached it yet
        rc = predict.main([str(data), "--output", str(tmp_path / "q.csv"), "--model",
                           f"models:/{reg.registry.model_name}@champion"])
        assert rc == 2 and "does not match the md5 recorded at registration" in capsys.readouterr().err
        assert not (tmp_path / "q.csv").exists() and not marker.exists()
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")


def test_a_worker_caches_the_champion_by_md5(reg, tmp_path, monkeypatch):
    """The load drill: every drift report and shard downloaded `@champion` through the MLflow server again (~15 s
    of ~50 s). A worker keeps each artifact under its registered md5, checks it again at every use, and downloads
    only the MLmodel file (which lists the artifacts) once it has them."""
    from components.monitoring.drift import model_fingerprint

    registry.register(reg)
    registry.promote(reg)
    fetched = []
    real = store.download_model_file
    monkeypatch.setattr(store, "download_model_file",
                        lambda n, v, rel, dst: fetched.append(rel) or real(n, v, rel, dst))
    monkeypatch.setenv("DEEPFUSION_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri(reg))
    uri = f"models:/{reg.registry.model_name}@champion"
    first = load_categorizer_uri(uri, reg)
    assert len(fetched) > 2 and fetched[0] == "MLmodel"
    fetched.clear()
    second = load_categorizer_uri(uri, reg)
    assert fetched == ["MLmodel"]  # every artifact from the cache
    assert model_fingerprint(first) == model_fingerprint(second)  # the same weights and combiner
    damaged = next((tmp_path / "cache").rglob("combiner.json"))
    damaged.write_text("{}")
    fetched.clear()
    third = load_categorizer_uri(uri, reg)
    assert len(fetched) == 2 and fetched[1].endswith("combiner.json")  # only the damaged copy downloaded again
    assert json.loads(damaged.read_text()) != {} and model_fingerprint(third) == model_fingerprint(first)
    monkeypatch.setenv("DEEPFUSION_MODEL_CACHE", "off")
    fetched.clear()
    load_categorizer_uri(uri, reg)
    assert len(fetched) > 2  # no cache: everything downloaded


def test_a_cache_the_worker_cannot_read_is_a_miss(tmp_path, monkeypatch):
    """The platform's services run as their own user and once inherited a cache folder of the test's (root):
    reading it was PermissionError, which the gate reported as an unreachable registry. Now it is a miss."""
    from components.serving import mlflow_model

    (tmp_path / "ab12" / "model.pt").parent.mkdir()
    (tmp_path / "ab12" / "model.pt").write_bytes(b"w")

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(mlflow_model, "file_md5", denied)
    assert mlflow_model.cached_artifact(tmp_path, "ab12", "model.pt") is None
    monkeypatch.setattr(Path, "mkdir", lambda *a, **k: denied(a[0]))
    assert mlflow_model.keep_artifact(tmp_path / "other", "cd34", tmp_path / "ab12" / "model.pt") == \
        tmp_path / "ab12" / "model.pt"  # not cached: loaded from the download


def test_lineage_dataset_model_metrics_and_model_card(reg):
    """Issue 42 (lineage): the training runs name their data (a dataset input whose digest is the DVC md5), the
    logged model carries its test metrics, and the registered model and version have descriptions."""
    from components.lifecycle.provenance import data_md5

    version = registry.register(reg)
    c = store.client(reg)
    mv = c.get_model_version(reg.registry.model_name, version)
    run = c.get_run(mv.run_id)
    datasets = [d.dataset for d in run.inputs.dataset_inputs]
    assert [(d.name, d.digest) for d in datasets] == [("catalog", data_md5())] and data_md5()
    logged = c.get_logged_model(mv.source.removeprefix("models:/"))
    metrics = {m.key: m.value for m in logged.metrics}
    evaluation = json.loads((Path(reg.paths.evaluate) / "metrics.json").read_text())
    served = evaluation["served_model"]
    assert metrics["test.articleType.macro_f1"] == pytest.approx(evaluation[served]["articleType"]["macro_f1"])
    card = mv.description
    assert f"`{data_md5()}`" in card and "no_image:" in card and "Known limits" in card
    full = evaluation["inputs"]["full"][served]
    assert f"- full: {100 * full['accuracy']:.1f} %" in card
    assert "articleType" in c.get_registered_model(reg.registry.model_name).description
    # The categorize DAG's review cut-off travels with the version (not read from the project's files).
    assert float(mv.tags["auto_accept_threshold"]) == pytest.approx(registry.auto_accept_threshold(evaluation))


def test_concurrent_promotions_leave_consistent_aliases(reg, tmp_path):
    v = registry.register(with_other_checkpoint(reg, tmp_path, seed=21))
    eager = dataclasses.replace(reg, registry=dataclasses.replace(reg.registry, min_gain=-1.0))
    results: list[object] = []

    def go():
        try:
            results.append(registry.promote(eager))
        except RegistryError as exc:
            results.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    promoted = [r for r in results if isinstance(r, Decision) and r.promote]
    assert len(promoted) == 1  # the second saw the challenger already champion, or no challenger left
    assert aliases(reg) == {"champion": v, "challenger": None}


def test_unreachable_registry_is_a_clear_error(reg, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(RegistryError, match="127.0.0.1:9"):
        registry.status(reg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_with_base64_image(reg, trained):
    _, data, _ = trained
    registry.register(reg)
    registry.promote(reg)
    port = free_port()
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": store.tracking_uri(reg)}
    proc = subprocess.Popen([f"{bindir}/mlflow", "models", "serve", "-m", f"models:/{reg.registry.model_name}@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"server exited: {proc.stdout.read()[-3000:]}")
                time.sleep(1)
        else:
            pytest.fail("mlflow models serve did not answer /ping within 120 s")
        b64 = base64.b64encode((data / "images" / "1011.jpg").read_bytes()).decode()
        row = {"id": 1011, "productDisplayName": "Puma Men Black Jeans", "gender": "Men", "baseColour": "Black",
               "season": "Summer", "year": 2015.0, "usage": "Casual", "brandName": "Puma", "ageGroup": "Adults-Men",
               "colour1": "", "colour2": "", "price": 999.0, "discountedPrice": 899.0, "fashionType": "Fashion",
               "articleAttributes": "{}", "image": b64}
        body = json.dumps({"dataframe_split": {"columns": list(row), "data": [list(row.values())]}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        pred = pd.DataFrame(answer["predictions"])
        assert pred.loc[0, "status"] == "ok" and pred.loc[0, "id"] == 1011
        assert 0 <= pred.loc[0, "articleType_confidence"] <= 1 and pred.loc[0, "articleType"]
        # As for the batch CLI, only the id is required: a product with just a title is answered too.
        body = json.dumps({"dataframe_split": {"columns": ["id", "productDisplayName"],
                                               "data": [[7, "Puma Men Black Jeans"]]}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            minimal = pd.DataFrame(json.loads(r.read())["predictions"])
        assert minimal.loc[0, "status"] == "no_image" and minimal.loc[0, "articleType"] == "Jeans"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_drift_says_when_the_reference_is_not_the_registered_models_data(reg):
    from components.monitoring.drift import reference_version

    registry.register(reg)
    registry.promote(reg)
    c, name = store.client(reg), reg.registry.model_name
    champion = store.alias_version(c, name, "champion")  # whichever version earlier tests left as champion
    uri = f"models:/{name}@champion"
    same = reference_version(reg, uri)
    assert same["matches_model"] is True and "warning" not in same
    recorded = store.version_tags(c, name, champion)["data_md5"]
    store.set_version_tags(c, name, champion, {"data_md5": "0123456789abcdef"})
    try:
        other = reference_version(reg, uri)
    finally:
        store.set_version_tags(c, name, champion, {"data_md5": recorded})
    assert other["matches_model"] is False and "trained on data version 0123456789ab" in other["warning"]
    assert reference_version(reg, "artifacts/stack/combiner.json")["matches_model"] is None

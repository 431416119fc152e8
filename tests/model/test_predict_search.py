from __future__ import annotations

import base64
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.catalog import CatalogError
from components.serving import predict, search
from components.serving.categorizer import Categorizer
from tests.conftest import TAXONOMY, make_catalog


def ckpt(params) -> Path:
    return Path(params.paths.train_fusion) / "model" / "model.pt"


def test_trained_model_learned_the_synthetic_task(trained):
    # The val split of this catalog is ~18 products (one flips 5 points): judge on the whole catalog instead.
    params, data, _ = trained
    pred, _ = predict.categorize(data, Categorizer.from_checkpoint(ckpt(params)), progress=False)
    truth = pd.read_parquet(Path(params.paths.ingest) / "products.parquet").set_index("id")["articleType"]
    pred = pred.set_index("id")
    assert (pred.loc[truth.index, "articleType"] == truth).mean() > 0.8


def test_predict_unlabeled_folder_with_missing_and_corrupt_images(trained, tmp_path):
    params, _, _ = trained
    new = make_catalog(tmp_path / "new", n=24, seed=7, labeled=False, start_id=5000)
    styles = new / "styles.csv"
    styles.write_text(styles.read_text() + "abc,Men,,,,Black,Summer,2015,Casual,Broken id row\n")
    out = tmp_path / "pred.csv"
    rc = predict.main([str(new), "--output", str(out), "--model", str(ckpt(params)),
                       "--embeddings", str(tmp_path / "emb.npz")])
    assert rc == 0
    pred = pd.read_csv(out)
    assert len(pred) == 25 and pred["id"].astype(str).str.len().gt(0).all()
    status = pred.set_index(pred["id"].astype(str))["status"]
    assert status["5004"] == "no_image" and status["5023"] == "corrupt_image" and status["5010"] == "ok"
    assert status["abc"].startswith("rejected: bad_id")
    ok = pred[pred["status"].isin(["ok", "no_image", "corrupt_image"])]
    assert ok["articleType"].notna().all() and ok["articleType_confidence"].between(0, 1).all()
    emb = np.load(tmp_path / "emb.npz")
    assert emb["image"].shape == emb["text"].shape == (24, 32)
    assert np.isnan(emb["image"][4]).all() and np.allclose(np.linalg.norm(emb["text"], axis=1), 1, atol=1e-4)


def test_chunks_run_side_by_side_give_the_one_chunk_predictions(trained, tmp_path, monkeypatch):
    """The CLI runs chunks on one worker per core, single-threaded each: same rows, same order, and torch's
    thread count is back to what it was afterwards, also when a chunk fails."""
    params, _, _ = trained
    new = make_catalog(tmp_path / "new", n=24, seed=7, labeled=False, start_id=5000)
    cat = Categorizer.from_checkpoint(ckpt(params))
    whole, whole_emb = predict.categorize(new, cat, embeddings=True, progress=False)
    monkeypatch.setattr(predict, "CHUNK", 5)  # 5 chunks, the last one short
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers even where the test process runs one torch thread
    try:
        chunked, chunked_emb = predict.categorize(new, cat, embeddings=True, progress=False)
        assert torch.get_num_threads() == 2
        calls, first = [], str(whole["id"].iloc[0])

        def failing(frame, images, embeddings=False):
            calls.append(len(frame))
            if str(frame["id"].iloc[0]) != first:  # the first chunk fails at once, the others long after
                time.sleep(1.5)
            raise RuntimeError("chunk failed")

        monkeypatch.setattr(cat, "predict", failing)
        with pytest.raises(RuntimeError, match="chunk failed"):
            predict.categorize(new, cat, progress=False)
        assert torch.get_num_threads() == 2 and len(calls) <= 3  # chunks not started are dropped
    finally:
        torch.set_num_threads(threads)
    # other batch shapes may move a float by an ulp: confidences (rounded to 4 places) within 1e-3
    conf = [c for c in whole if c.endswith("_confidence")]
    pd.testing.assert_frame_equal(chunked.drop(columns=conf), whole.drop(columns=conf))
    np.testing.assert_allclose(chunked[conf].to_numpy(float), whole[conf].to_numpy(float), atol=1e-3)
    np.testing.assert_allclose(chunked_emb["text"], whole_emb["text"], atol=1e-5)
    # Every chunk's ids, in the vectors' order (they were once the last chunk's alone: a search index of 4 ids
    # for 24 vectors)
    assert len(chunked_emb["ids"]) == len(chunked_emb["text"]) == 24
    np.testing.assert_array_equal(chunked_emb["ids"], whole["id"].to_numpy(np.int64))


@pytest.mark.skipif(not predict.can_fork(), reason="this platform cannot fork worker processes")
def test_chunks_in_forked_worker_processes_give_the_threaded_predictions(trained, tmp_path, monkeypatch, capsys):
    """The CLI's worker processes (`processes=True`) predict what worker threads predict, bit for bit; a chunk
    failing in a worker fails the call with its error, and torch's thread count is back afterwards."""
    params, _, _ = trained
    new = make_catalog(tmp_path / "new", n=24, seed=7, labeled=False, start_id=5000)
    cat = Categorizer.from_checkpoint(ckpt(params))
    monkeypatch.setattr(predict, "CHUNK", 5)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threaded, threaded_emb = predict.categorize(new, cat, embeddings=True, progress=False)
        forked, forked_emb = predict.categorize(new, cat, embeddings=True, progress=False, processes=True)
        assert torch.get_num_threads() == 2

        def failing(frame, images, embeddings=False):
            raise RuntimeError(f"chunk failed in process {os.getpid()}")

        monkeypatch.setattr(cat, "predict", failing)
        with pytest.raises(RuntimeError, match="chunk failed in process") as err:
            predict.categorize(new, cat, progress=False, processes=True)
        assert f"process {os.getpid()}" not in str(err.value)  # it ran in a worker, not here
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    pd.testing.assert_frame_equal(forked, threaded)
    for k in ("image", "text", "ids"):
        np.testing.assert_array_equal(forked_emb[k], threaded_emb[k])
    # a worker that dies (killed, a crash in native code) is a clear error of the CLI, and nothing is written
    monkeypatch.setattr(cat, "predict", lambda *a, **k: os._exit(3))
    monkeypatch.setattr(predict, "load_categorizer", lambda model: cat)
    out = tmp_path / "pred.csv"
    assert predict.main([str(new), "--output", str(out), "--model", str(ckpt(params)), "--workers", "2"]) == 1
    assert "a worker process died" in capsys.readouterr().err and not out.exists()


def test_products_without_an_image_are_categorized_from_title_and_metadata(trained, tmp_path):
    # Judged on 60 imageless products, not one: a single tiny-model prediction flipped between machines.
    params, _, _ = trained
    new = make_catalog(tmp_path / "new", n=60, seed=7, start_id=5000, comma_titles=0, missing_images=60,
                       corrupt_images=0)
    pred, _ = predict.categorize(new, Categorizer.from_checkpoint(ckpt(params)), progress=False)
    assert (pred["status"] == "no_image").all()
    truth = {5000 + i: TAXONOMY[i % len(TAXONOMY)] for i in range(60)}  # as make_catalog labels them
    master, _, article = zip(*(truth[int(pid)][:3] for pid in pred["id"]))
    assert (pred["masterCategory"] == list(master)).mean() >= 0.9
    assert (pred["articleType"] == list(article)).mean() >= 0.6


def test_labels_present_in_the_batch_are_never_used(trained, tmp_path):
    params, _, _ = trained
    a = make_catalog(tmp_path / "a", n=12, seed=3, start_id=7000)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    lines = (b / "styles.csv").read_text().splitlines()
    lines = [lines[0]] + [ln.replace("Apparel,Topwear,Tshirts", "Footwear,Shoes,Watches") for ln in lines[1:]]
    (b / "styles.csv").write_text("\n".join(lines) + "\n")
    cat = Categorizer.from_checkpoint(ckpt(params))
    pa, _ = predict.categorize(a, cat, progress=False)
    pb, _ = predict.categorize(b, cat, progress=False)
    pd.testing.assert_frame_equal(pa, pb)


def test_bad_folder_is_a_clear_error(trained, tmp_path, capsys):
    params, _, _ = trained
    (tmp_path / "empty").mkdir()
    rc = predict.main([str(tmp_path / "empty"), "--output", str(tmp_path / "p.csv"), "--model", str(ckpt(params))])
    assert rc == 2 and "styles.csv" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(CatalogError):
        predict.categorize(tmp_path / "nope", Categorizer.from_checkpoint(ckpt(params)))


def test_search_finds_the_product_by_its_own_title_and_image(trained, tmp_path):
    params, data, _ = trained
    cat = Categorizer.from_checkpoint(ckpt(params))
    index = search.build_index(data, cat)
    assert list(index.facets.columns[:3]) == ["masterCategory", "subCategory", "articleType"]
    assert "baseColour" in index.facets.columns  # the schema's categorical columns filter too
    s = search.Searcher(cat, index)
    rows = {ln.split(",", 1)[0]: ln.split(",", 9) for ln in (data / "styles.csv").read_text().splitlines()[1:]}
    pid = str(index.ids[20])
    title, kind = rows[pid][9], rows[pid][4]
    hits = s.search(s.query(title), 5)
    assert str(hits["id"].iloc[0]) == pid
    photo = (data / "images" / f"{pid}.jpg").read_bytes()
    assert pid in s.search(s.query(photo=photo), 5)["id"].astype(str).tolist()
    # A query runs one tower; its vector is the one the whole network gave the index for the same input.
    np.testing.assert_allclose(s.embed_text(title), index.text[20], atol=1e-4)
    np.testing.assert_allclose(s.embed_photo(photo), index.image[20], atol=1e-4)
    # A photo steered by words is their unit vectors' sum; with a filter every hit passes it. (Which product
    # ranks first is not asserted: the synthetic shots of one class differ only by jitter.)
    q = s.query(kind, photo)
    np.testing.assert_allclose(q, search.unit(search.unit(s.embed_photo(photo)) + search.unit(s.embed_text(kind))),
                               atol=1e-5)
    both = s.search(q, 5, {"articleType": [kind]})
    assert len(both) == 5 and (both["articleType"] == kind).all()
    like = s.search(s.like(pid), 5, exclude=(pid,))
    assert pid not in like["id"].astype(str).tolist() and (like["articleType"] == kind).mean() >= 0.6
    with pytest.raises(ValueError, match="cannot be used"):
        s.query(photo=b"not a jpeg")
    with pytest.raises(ValueError, match="nothing to search for"):
        s.query("  ")


def test_an_index_answers_only_the_model_that_built_it(trained, tmp_path):
    params, data, _ = trained
    cat = Categorizer.from_checkpoint(ckpt(params))
    index = search.build_index(data, cat)
    other = tmp_path / "other.pt"
    blob = torch.load(ckpt(params), weights_only=True)
    name = next(k for k, v in blob["state_dict"].items() if v.is_floating_point())
    blob["state_dict"][name] = blob["state_dict"][name] + 1e-3  # other weights: another model version
    torch.save(blob, other)
    with pytest.raises(search.SearchIndexError, match="rebuild it"):
        search.Searcher(Categorizer.from_checkpoint(other), index)
    assert search.index_path(tmp_path, cat) != search.index_path(tmp_path, Categorizer.from_checkpoint(other))


def test_search_cli_round_trip(trained, tmp_path, capsys):
    params, data, _ = trained
    idx = tmp_path / "index.npz"
    model = str(ckpt(params))
    assert search.main(["--build", str(data), "--index", str(idx), "--model", model]) == 0
    assert search.main(["--text", "Nike Men Black Watches", "--index", str(idx), "--model", model, "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "score" in out and len(out.strip().splitlines()) == 5  # build line, header, 3 hits
    assert search.main(["--text", "Black", "--where", "articleType=Watches", "--json", "--index", str(idx),
                        "--model", model, "-k", "4"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 4 and all(h["articleType"] == "Watches" for h in hits)
    assert search.main(["--like", str(hits[0]["id"]), "--index", str(idx), "--model", model, "--json"]) == 0
    assert str(hits[0]["id"]) not in capsys.readouterr().out
    assert search.main(["--text", "x", "--where", "articleType=Watchs", "--index", str(idx), "--model", model]) == 2
    assert "did you mean Watches" in capsys.readouterr().err
    assert search.main(["--image", str(tmp_path / "missing.jpg"), "--index", str(idx), "--model", model]) == 2


def test_pyfunc_input_accepts_base64_images(trained):
    from components.serving.mlflow_model import CategorizerModel

    params, data, _ = trained
    m = CategorizerModel()
    m.load_from(ckpt(params))
    b64 = base64.b64encode((data / "images" / "1010.jpg").read_bytes()).decode()
    out = m.predict(None, pd.DataFrame({"id": [1010], "productDisplayName": ["Puma Men Red Tshirts"],
                                        "image": [b64]}))
    assert out.loc[0, "status"] == "ok" and out.loc[0, "articleType"] in {"Tshirts", "Shirts", "Jeans",
                                                                          "Casual Shoes", "Sports Shoes",
                                                                          "Watches", "Other"}


def test_the_review_station_searches_with_the_model_by_words_photo_filters_and_like(trained, tmp_path):
    """The station's search page and API over the real model and its index (the thumbnails come from the
    catalog index; the photo is posted, never read from a path)."""
    import re

    from components.review.app import create_app
    from components.review.catalog_index import CatalogIndex
    from components.review.store import Store

    params, data, _ = trained
    cat = Categorizer.from_checkpoint(ckpt(params))
    idx = tmp_path / "index.npz"
    search.build_index(data, cat).save(idx)
    products = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    levels = list(params.catalog.levels)
    store = Store(f"sqlite:///{tmp_path / 'review.db'}")
    store.add_user("ben", "a long enough password", "reviewer")
    app = create_app(store, levels, [], secret_key=b"k" * 32,
                     index=CatalogIndex(products, levels, Path(params.paths.raw),
                                        lambda: search.open_searcher(str(ckpt(params)), idx)))
    client = app.test_client()
    token = client.post("/api/token", json={"user": "ben", "password": "a long enough password"}).get_json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    watches = client.post("/api/search", headers=auth, json={"text": "Black Watches", "k": 5,
                                                              "filters": {"articleType": ["Watches"]}}).get_json()
    assert len(watches["hits"]) == 5 and all(h["facets"]["articleType"] == "Watches" for h in watches["hits"])
    photo = base64.b64encode((data / "images" / "1020.jpg").read_bytes()).decode()
    by_photo = client.post("/api/search", headers=auth, json={"photo_base64": photo, "k": 5}).get_json()["hits"]
    assert "1020" in [h["product_id"] for h in by_photo]
    like = client.post("/api/search", headers=auth, json={"like": "1020", "k": 5}).get_json()["hits"]
    assert "1020" not in [h["product_id"] for h in like]
    bad = client.post("/api/search", headers=auth, json={"text": "x", "filters": {"articleType": ["Watchs"]}})
    assert bad.status_code == 400 and "did you mean Watches" in bad.get_json()["error"]
    # The page: log in, words + a filter, thumbnails that load.
    page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    client.post("/login", data={"user": "ben", "password": "a long enough password", "csrf_token": csrf})
    html = client.get("/search?q=Black+Watches&f.articleType=Watches").get_data(as_text=True)
    shown = re.findall(r'src="/example/(\d+)"', html)
    assert len(shown) >= 3 and client.get(f"/example/{shown[0]}").mimetype == "image/jpeg"
    assert 'href="/search?like=' in html


def test_search_through_the_retrieval_towers(trained, tmp_path):
    """The pipeline's retrieval towers (train_retrieval) fit this model's fusion network whatever form it is
    loaded in; an index built through them answers only through them, a query's vector is the one the index holds,
    and towers of another network are not used. evaluate reports both spaces."""
    from components.models.retrieval import towers_file
    from components.serving.stacked import StackedCategorizer

    params, data, _ = trained
    path = towers_file(params.paths.train_retrieval)
    trained_on = json.loads((Path(params.paths.train_retrieval) / "metrics.json").read_text())
    assert trained_on["val"]["retrieval"]["score"] >= trained_on["val"]["fusion_space"]["score"]
    cat = Categorizer.from_checkpoint(ckpt(params))
    towers = search.find_towers(cat, path)
    assert towers is not None  # BatchNorm folded at load: the fingerprint does not read the image trunk
    assert search.find_towers(StackedCategorizer.load(Path(params.paths.stack) / "combiner.json"), path) is not None
    index = search.build_index(data, cat, towers=towers)
    assert index.model_key == search.model_key(cat, towers) != search.model_key(cat)
    s = search.Searcher(cat, index, towers)
    rows = {ln.split(",", 1)[0]: ln.split(",", 9) for ln in (data / "styles.csv").read_text().splitlines()[1:]}
    pid = str(index.ids[20])
    np.testing.assert_allclose(s.embed_text(rows[pid][9]), index.text[20], atol=1e-4)
    photo = (data / "images" / f"{pid}.jpg").read_bytes()
    np.testing.assert_allclose(s.embed_photo(photo), index.image[20], atol=1e-4)
    assert str(s.search(s.query(rows[pid][9]), 5)["id"].iloc[0]) == pid
    with pytest.raises(search.SearchIndexError, match="rebuild it"):
        search.Searcher(cat, index)  # the fusion space's searcher cannot read the retrieval index
    blob = torch.load(ckpt(params), weights_only=True)
    name = next(k for k in blob["state_dict"] if k.startswith("towers.text."))
    blob["state_dict"][name] = blob["state_dict"][name] + 1e-3
    torch.save(blob, tmp_path / "other.pt")
    assert search.find_towers(Categorizer.from_checkpoint(tmp_path / "other.pt"), path) is None
    assert search.find_towers(cat, tmp_path / "absent.pt") is None
    fusion = json.loads((Path(params.paths.evaluate) / "metrics.json").read_text())["fusion"]
    assert {"retrieval", "retrieval_tuned", "retrieval_kagl", "retrieval_kagl_tuned"} <= set(fusion)
    assert fusion["retrieval_tuned"]["queries"] == fusion["retrieval"]["queries"] > 0

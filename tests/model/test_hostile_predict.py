"""`python -m components.predict` on a folder that mixes every hostile input: it finishes, one status per row."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
from PIL import Image

from components.serving import predict

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"


def png(size, mode="RGB", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (255,) if mode == "L" else (200, 30, 30) if mode == "RGB" else 1).save(buf, format=fmt)
    return buf.getvalue()


def test_predict_on_a_hostile_folder(trained, tmp_path):
    params, data, _ = trained
    batch = tmp_path / "batch"
    (batch / "images").mkdir(parents=True)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(png((60, 80), fmt="JPEG"))
    (batch / "images" / "good.jpg").write_bytes((data / "images" / "1011.jpg").read_bytes())
    (batch / "images" / "bomb.png").write_bytes(png((20_000, 20_000), mode="1"))
    (batch / "images" / "anim.gif").write_bytes(png((60, 80), fmt="GIF"))
    (batch / "images" / "trunc.jpg").write_bytes((data / "images" / "1011.jpg").read_bytes()[:200])
    (batch / "images" / "escape.jpg").symlink_to(outside)
    styles = [HEADER]
    images = {}
    cases = {1: "images/good.jpg", 2: "images/bomb.png", 3: "images/anim.gif", 4: "images/trunc.jpg",
             5: "images/escape.jpg", 6: "../secret.jpg", 7: str(outside), 8: "images/none.jpg"}
    for pid, img in cases.items():
        styles.append(f"{pid},Men,,,,Black,Summer,2015,Casual,Puma Men Black Jeans {pid}")
        images[pid] = img
    styles += ["²,Men,,,,Black,Summer,2015,Casual,Odd id", "0009,Men,,,,Black,Summer,2015,Casual,Leading zeros",
               "9,Men,,,,Black,Summer,2015,Casual,Same product as 0009",
               '10,Men,,,,Black,Summer,2015,Casual,"Open quote title',
               "11,Men,,,,Black,Summer,2015,Casual," + "long " * 40_000]
    (batch / "styles.csv").write_text("\n".join(styles) + "\n", encoding="utf-8")
    with (batch / "products.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "image"])
        w.writerows(images.items())

    out = tmp_path / "pred.csv"
    assert predict.main([str(batch), "--output", str(out), "--model", str(Path(params.paths.stack))]) == 0
    pred = pd.read_csv(out, dtype={"id": str})
    assert len(pred) == len(styles) - 1  # one status per data line of styles.csv
    status = dict(zip(pred["id"], pred["status"].str.split(":").str[0]))
    assert status["1"] == "ok" and status["8"] == "no_image"
    assert status["2"] == status["3"] == status["4"] == "corrupt_image"
    assert status["5"] == status["6"] == status["7"] == "rejected_image"
    assert status["²"] == "rejected" and status["9"] == "rejected"  # 0009 was read as product 9 first
    assert status["10"] in ("ok", "no_image") and status["11"] in ("ok", "no_image")
    assert pred.loc[pred["status"] == "ok", "articleType"].notna().all()

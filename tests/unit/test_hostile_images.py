"""Hostile and broken images: every one gets a per-row status, none stops the batch or reads outside it."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from components.images import MAX_IMAGE_BYTES, ImageError, decode_image
from components.serving.categorizer import load_images

H, W = 80, 64


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encoded(Image.new("1", (20_000, 20_000)), "PNG")  # 400 Mpx in a few tens of KB
    assert len(bomb) < 200_000
    with pytest.raises(ImageError, match="pixel"):
        decode_image(bomb, H, W)


def test_image_over_the_pixel_cap_but_under_pillows_is_refused():
    big = encoded(Image.new("L", (8_000, 6_000)), "PNG")  # 48 Mpx: Pillow would only warn
    with pytest.raises(ImageError, match="40,000,000-pixel limit"):
        decode_image(big, H, W)


def test_large_jpeg_decodes_at_reduced_scale_to_the_same_picture():
    img = Image.new("RGB", (2_400, 3_000), (200, 30, 30))
    out = decode_image(encoded(img, "JPEG"), H, W)
    assert out.shape == (H, W, 3) and abs(int(out[40, 32, 0]) - 200) < 10


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_formats_outside_the_allowed_list_are_refused(fmt):
    with pytest.raises(ImageError, match="not a JPEG/PNG/WEBP image"):
        decode_image(encoded(Image.new("RGB", (60, 80)), fmt), H, W)


def test_paths_outside_the_batch_folder_are_rejected_without_saying_whether_they_exist(tmp_path):
    batch = tmp_path / "batch"
    (batch / "images").mkdir(parents=True)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(encoded(Image.new("RGB", (60, 80)), "JPEG"))
    (batch / "images" / "link.jpg").symlink_to(secret)
    (batch / "images" / "dir.jpg").mkdir()
    good = batch / "images" / "ok.jpg"
    good.write_bytes(encoded(Image.new("RGB", (60, 80), (10, 200, 10)), "JPEG"))
    huge = batch / "images" / "huge.jpg"
    with huge.open("wb") as fh:
        fh.truncate(MAX_IMAGE_BYTES + 1)  # sparse: nothing is really written
    sources = ["images/ok.jpg", "../secret.jpg", "../nope.jpg", str(secret), "images/link.jpg",
               "images/dir.jpg", "images/missing.jpg", "images/huge.jpg"]
    status = [s.split(":")[0] for s in load_images(sources, H, W, root=batch).status]
    assert status == ["ok", "rejected_image", "rejected_image", "rejected_image", "rejected_image", "no_image",
                      "no_image", "corrupt_image"]


def test_the_served_model_accepts_base64_and_refuses_paths(tmp_path):
    img = tmp_path / "a.jpg"
    img.write_bytes(encoded(Image.new("RGB", (60, 80)), "JPEG"))
    b64 = base64.b64encode(img.read_bytes()).decode()
    batch = load_images([b64, str(img), "/etc/passwd", "not base64 !", None], H, W)  # no root: paths refused
    assert [s.split(":")[0] for s in batch.status] == ["ok", "rejected_image", "rejected_image", "corrupt_image",
                                                       "no_image"]
    assert np.all(batch.pixels[1:] == 0)


def test_ingest_reads_images_only_inside_the_catalog(tmp_path):
    from components.pipeline.ingest import load_images as ingest_images

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "1.jpg").write_bytes(encoded(Image.new("RGB", (60, 80), (10, 200, 10)), "JPEG"))
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(encoded(Image.new("RGB", (60, 80)), "JPEG"))
    (root / "images" / "2.jpg").symlink_to(secret)
    (root / "images" / "3.jpg").mkdir()  # a folder where a file should be
    paths = ["images/1.jpg", "images/2.jpg", str(secret), "../secret.jpg", "images/3.jpg", "", "images/none.jpg"]
    out = np.zeros((len(paths), H, W, 3), np.uint8)
    md5s, _, status = ingest_images(root, paths, out, H, W, workers=1)
    kinds = [s.split(":")[0] for s in status]
    assert kinds == ["ok", "rejected_image", "rejected_image", "rejected_image", "no_image", "no_image", "no_image"]
    assert md5s[1:4] == ["", "", ""] and out[1:4].max() == 0  # nothing of the outside file was read


def test_replay_links_only_images_inside_the_catalog(tmp_path):
    import pandas as pd

    from components.monitoring.replay import write_batch
    from tests.conftest import SCHEMA

    src = tmp_path / "data"
    (src / "images").mkdir(parents=True)
    (src / "images" / "1.jpg").write_bytes(b"\xff\xd8\xff inside")
    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8\xff outside")
    (src / "products.csv").write_text("id,image\n1,images/1.jpg\n2,../secret.jpg\n3,/etc/hostname\n")
    header = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
    frame = pd.DataFrame({"id": [1, 2, 3], "image": ["images/1.jpg", "../secret.jpg", "/etc/hostname"]})
    write_batch(src, frame, {str(i): f"{i},Men,A,B,C,Red,Summer,2015,Casual,t{i}" for i in (1, 2, 3)}, header,
                tmp_path / "batch", SCHEMA)
    assert sorted(p.name for p in (tmp_path / "batch" / "images").iterdir()) == ["1.jpg"]

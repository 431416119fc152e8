"""int8 image towers (`models.quantize`): close to fp32, the shared trunk still shared, refused where unknown."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.models.fusion import build_model
from components.models.quantize import QuantizedTrunk, int8_available, quantize_image_tower, tensor_bytes
from components.models.runtime import predict_arrays, predict_many, prepare_for_inference
from tests.unit.test_models import SMALL_RESNET, as_arrays, batch, cfg

pytestmark = pytest.mark.skipif(not int8_available(), reason="no x86 int8 engine in this torch build")


def photos(n: int, seed: int) -> torch.Tensor:
    """Smooth uint8 images (a light background, a darker blob): closer to product shots than noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 80), torch.linspace(-1, 1, 64), indexing="ij")
    centre = torch.rand(n, 2, 1, 1, generator=g) - 0.5
    blob = torch.exp(-((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2) * 6)  # (n, 80, 64)
    colour = torch.rand(n, 1, 1, 3, generator=g) * 200
    img = 240 - blob[..., None] * colour + torch.randn(n, 80, 64, 3, generator=g) * 4
    return img.clamp(0, 255).to(torch.uint8)


def trained_statistics(model) -> None:
    """BatchNorm statistics away from their initial 0/1, as a trained model has them."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            b = batch(16, seed)
            b["image"] = photos(16, seed)
            model.forward_features(b)
    model.eval()


def test_int8_tower_stays_close_to_fp32_and_leaves_the_rest_of_the_model_alone():
    torch.manual_seed(0)
    model = build_model(cfg(("image", "text", "metadata"), **SMALL_RESNET))
    trained_statistics(model)
    prepare_for_inference(model)
    b = batch(32, 7)
    b["image"] = photos(32, 7)
    with torch.no_grad():
        before = model.forward_features(b)
    assert quantize_image_tower(model.towers["image"], photos(64, 1))
    tower = model.towers["image"]
    assert isinstance(tower.backbone.conv1, QuantizedTrunk)
    assert quantize_image_tower(tower, photos(64, 1))  # a second call is a no-op, not a double quantization
    with torch.no_grad():
        after = model.forward_features(b)
    error = (after["image"] - before["image"]).norm() / before["image"].norm()
    assert 0 < error < 0.1  # int8 really ran (not bit-equal), and stayed close
    assert torch.equal(after["text"], before["text"]) and torch.equal(after["metadata"], before["metadata"])
    with pytest.raises(RuntimeError, match="cannot train"):
        model.train()


def test_int8_towers_sharing_a_trunk_still_compute_it_once_and_predict_as_alone():
    torch.manual_seed(0)
    image = build_model(cfg(("image",), **SMALL_RESNET))
    fusion = build_model(cfg(("image", "text", "metadata"), **SMALL_RESNET))
    trained_statistics(image)
    trunk = {k: v for k, v in image.towers["image"].backbone.state_dict().items() if not k.startswith("layer4.")}
    fusion.towers["image"].backbone.load_state_dict(trunk, strict=False)
    models = {"image": image, "fusion": fusion}
    calibration = photos(64, 3)
    for m in models.values():
        prepare_for_inference(m)
        assert quantize_image_tower(m.towers["image"], calibration)
    b = batch(12, 1)
    b["image"] = photos(12, 2)
    a, cpu = as_arrays(b), torch.device("cpu")
    calls = []
    hooks = [m.towers["image"].backbone.conv1.register_forward_hook(lambda *_: calls.append(1))
             for m in models.values()]
    together = predict_many(models, a, 4, cpu)
    assert len(calls) == 3  # 3 batches, the int8 trunk once each
    for h in hooks:
        h.remove()
    for name, m in models.items():
        for p, q in zip(predict_arrays(m, a, 4, cpu)["probs"], together[name]["probs"]):
            np.testing.assert_allclose(p, q, atol=1e-6)


def test_int8_is_refused_where_the_split_is_unknown_or_batchnorm_unfolded():
    mobilenet = prepare_for_inference(build_model(cfg(("image",))))
    assert not quantize_image_tower(mobilenet.towers["image"], photos(8, 0))
    unfolded = build_model(cfg(("image",), **SMALL_RESNET)).eval()
    assert not quantize_image_tower(unfolded.towers["image"], photos(8, 0))
    assert not isinstance(unfolded.towers["image"].backbone.conv1, QuantizedTrunk)


def test_int8_is_deterministic_and_fingerprinted_by_its_integers_and_scales():
    """Drift's model fingerprint and the shared trunk rely on it: the same weights and calibration give the
    same int8 model on every load; other calibration images give another one."""
    def state(calibration):
        torch.manual_seed(0)
        model = build_model(cfg(("image",), **SMALL_RESNET))
        trained_statistics(model)
        prepare_for_inference(model)
        quantize_image_tower(model.towers["image"], calibration)
        return {k: tensor_bytes(v) for k, v in model.state_dict().items()}

    first, again, other = state(photos(32, 1)), state(photos(32, 1)), state(photos(32, 9))
    assert any(v.is_quantized for v in build_int8_weights(photos(32, 1)))
    assert first == again and first != other


def build_int8_weights(calibration):
    model = prepare_for_inference(build_model(cfg(("image",), **SMALL_RESNET)))
    quantize_image_tower(model.towers["image"], calibration)
    return list(model.state_dict().values())

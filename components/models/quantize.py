"""int8 image towers for CPU inference: post-training static quantization of a folded ResNet backbone.

The convolutions are ~80 % of what serving a product costs on CPU, and they already run near the fp32 peak of
a core (`benchmark.py predict`); x86 int8 kernels (VNNI-less AVX2 included) run the same backbone ~2x faster.
Activation ranges are observed on calibration images the stack stage draws from the train split and ships
beside its combiner, so the stack is fitted, evaluated and served on the same int8 experts.

The only module that touches `torch.ao.quantization` (FX graph mode, x86 backend). PyTorch marks that API
deprecated in favour of torchao's PT2E flow, which needs torch.compile to run fast on CPU; our torch is
pinned, and `tests/unit/test_quantize.py` fails loudly the day it goes.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

ENGINE = "x86"  # fbgemm + oneDNN int8 kernels; absent on ARM builds (int8 then stays off)


def int8_available() -> bool:
    return ENGINE in torch.backends.quantized.supported_engines


def tensor_bytes(t: torch.Tensor) -> bytes:
    """A state-dict tensor's content for fingerprints: an int8 tensor as its integers and its scales (numpy
    has no quantized dtype)."""
    t = t.detach().cpu()
    if not t.is_quantized:
        return t.contiguous().numpy().tobytes()
    if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scales = [t.q_per_channel_scales(), t.q_per_channel_zero_points().double()]
    else:
        scales = [torch.tensor([t.q_scale(), float(t.q_zero_point())], dtype=torch.float64)]
    return t.int_repr().contiguous().numpy().tobytes() + b"".join(s.double().numpy().tobytes() for s in scales)


class QuantizedTrunk(nn.Module):
    """The stem and the stages before the last one as one int8 graph (float in, float out): the part the image
    baseline and the fusion network share, so `trunk()` still runs once for both."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


class _Trunk(nn.Module):
    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.conv1, self.act1, self.maxpool = b.conv1, b.act1, b.maxpool
        self.layer1, self.layer2, self.layer3 = b.layer1, b.layer2, b.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.maxpool(self.act1(self.conv1(x))))))


def _int8(module: nn.Module, calibration: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():  # the API's deprecation notices (see the module docstring), once per load
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        prepared = prepare_fx(copy.deepcopy(module).eval(), get_default_qconfig_mapping(ENGINE),
                              example_inputs=(calibration[:1],))
        prepared(calibration)  # observers record the activation ranges
        return convert_fx(prepared)


@torch.no_grad()
def quantize_image_tower(tower: nn.Module, calibration: torch.Tensor) -> bool:
    """Make a folded ResNet image tower (`prepare_for_inference`) run its backbone in int8, in place.

    `calibration`: uint8 images (N, H, W, 3) as the tower takes them. The trunk and the last stage are
    quantized separately so that towers sharing a trunk (`trunk_key`, computed before) still share it: the
    same fp32 weights and the same calibration give the same int8 trunk. Returns False, leaving the tower
    fp32, where int8 does not apply (no x86 int8 engine, not a folded plain ResNet).
    """
    if getattr(tower, "quantized", False):
        return True
    if not int8_available() or not tower.folded or tower.trunk_key() is None:
        return False
    torch.backends.quantized.engine = ENGINE
    b = tower.backbone
    trunk = _Trunk(b).eval()
    x = tower.preprocess(calibration)
    mid = trunk(x)
    quant_trunk, quant_last = QuantizedTrunk(_int8(trunk, x)), _int8(b.layer4, mid)
    # timm's forward_features runs conv1, bn1, act1, maxpool, layer1..layer4 by name: the int8 trunk takes
    # conv1's place and the rest of it becomes identities, so forward() and trunk() keep working unchanged.
    b.conv1, b.layer4 = quant_trunk, quant_last
    for name in ("bn1", "act1", "maxpool", "layer1", "layer2", "layer3"):
        setattr(b, name, nn.Identity())
    tower.quantized = True
    return True

"""Mixed precision: bf16 autocast on CPUs that have it natively, fp32 elsewhere, fp16 on CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.data import Arrays
from components.models import runtime
from components.models.fusion import ModelConfig, build_model
from components.models.runtime import autocast, cpu_dtype, predict_arrays


def test_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16\n\nprocessor\t: 1\n")
    assert {"avx512_bf16", "amx_bf16"} <= runtime.cpu_flags(info)
    assert runtime.cpu_flags(tmp_path / "missing") == set()


def test_auto_falls_back_to_fp32_without_native_bf16(monkeypatch):
    monkeypatch.delenv(runtime.PRECISION_ENV, raising=False)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"fpu", "avx2", "avx512f"})
    runtime.cpu_bf16_native.cache_clear()
    try:
        native, why = runtime.cpu_bf16_native()
        assert not native and "none of avx512_bf16, amx_bf16" in why
        assert cpu_dtype("auto") == torch.float32
        assert cpu_dtype("bf16") == torch.bfloat16  # forced by params (train.cpu_precision: bf16)
        with autocast(torch.device("cpu")):
            assert not torch.is_autocast_enabled("cpu")
    finally:
        runtime.cpu_bf16_native.cache_clear()


def test_the_environment_forces_what_auto_means_on_a_worker(monkeypatch):
    """Serving has no params: DEEPFUSION_CPU_PRECISION pins `auto` (an explicit bf16/fp32 still wins)."""
    cpu = torch.device("cpu")
    monkeypatch.setenv(runtime.PRECISION_ENV, "bf16")
    assert cpu_dtype("auto") == torch.bfloat16 and runtime.inference_precision(cpu) == "cpu-bf16"
    assert cpu_dtype("fp32") == torch.float32
    monkeypatch.setenv(runtime.PRECISION_ENV, "fp32")
    assert cpu_dtype() == torch.float32 and runtime.inference_precision(cpu) == "cpu-fp32"
    assert runtime.inference_precision(torch.device("cuda")) == "cuda-fp16"
    monkeypatch.setenv(runtime.PRECISION_ENV, "half")
    with pytest.raises(ValueError, match="DEEPFUSION_CPU_PRECISION='half'"):
        cpu_dtype()


def test_forced_precisions_and_the_amp_switch():
    cpu = torch.device("cpu")
    with autocast(cpu, cpu_precision="bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    with autocast(cpu, cpu_precision="fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, enabled=False, cpu_precision="bf16"):  # train.amp: false means fp32 everywhere
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="not one of"):
        cpu_dtype("fp16")


def test_cuda_path_is_float16_autocast():
    ctx = autocast(torch.device("cuda"))
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.float16


def tiny_model() -> tuple[torch.nn.Module, Arrays]:
    cfg = ModelConfig(backbone="resnet18", embed_dim=16, text_dim=8, text_channels=8, text_kernels=(1, 2), meta_dim=4,
                      dropout=0.0, wide=True, low_res_stem=False, backbone_channels=(8, 8, 16, 16), stem_width=0,
                      modalities=("image", "text", "metadata"), vocab_size=50, subword_buckets=64,
                      attr_vocab_size=10, cardinalities=(4, 5), n_numeric=2, n_classes=(2, 3, 5), text_pretrained="")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    rng = np.random.default_rng(0)
    n = 40
    a = Arrays(tokens=rng.integers(1, 50, (n, 6)), subwords=rng.integers(1, 64, (n, 12)),
               attrs=rng.integers(0, 10, (n, 4)), cat=rng.integers(0, 4, (n, 2)),
               num=rng.normal(size=(n, 2)).astype(np.float32), images=rng.integers(0, 255, (n, 80, 64, 3), np.uint8),
               has_image=np.ones(n, bool), labels=np.full((n, 3), -1), group=np.arange(n))
    return model, a


def test_bf16_and_fp32_predict_the_same_up_to_tolerance():
    model, a = tiny_model()
    cpu = torch.device("cpu")
    p32 = predict_arrays(model, a, 16, cpu, cpu_precision="fp32")["probs"]
    p16 = predict_arrays(model, a, 16, cpu, cpu_precision="bf16")["probs"]
    for x, y in zip(p32, p16):
        assert x.dtype == y.dtype == np.float32  # softmax and everything after the towers stay fp32
        np.testing.assert_allclose(x, y, atol=0.03)
        assert (x.argmax(1) == y.argmax(1)).mean() >= 0.9

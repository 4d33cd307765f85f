"""Compute precision: which dtype each setting gives on which device, the CPU bf16 detection and its
refusal on CPUs without native bf16 (simulated), and a bf16 training run on this CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rfdetr.accel.kernels import fp32_kernel
from rfdetr.accel.linear import CpuLinear
from rfdetr.cli.common import add_training_flags, train_overrides
from rfdetr.config import RunConfig, TrainConfig, model_config
from rfdetr.datasets import make_synthetic_coco
from rfdetr.datasets.coco import dataset_classes
from rfdetr.models import build_detector
from rfdetr.training.trainer import Trainer
from rfdetr.util import precision
from rfdetr.util.precision import (
    PrecisionUnavailable,
    autocast_dtype,
    autocast_for,
    cpu_flags,
    cpu_has_bf16,
    cpu_vendor,
)
from rfdetr.util.weight_fill import fill_model_

CPU = torch.device("cpu")
ZEN4_FLAGS = "fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 vaes"
AVX2_FLAGS = "fpu sse2 avx avx2 fma"


@pytest.fixture
def simulated_cpu(monkeypatch, tmp_path):
    """Make the CPU detection read a cpuinfo file with the given flags line."""
    def install(flags: str):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        monkeypatch.setattr(precision, "cpu_flags", lambda: cpu_flags(cpuinfo))
        cpu_has_bf16.cache_clear()
    yield install
    cpu_has_bf16.cache_clear()


def test_cpu_flags_are_read_from_the_first_processor(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {ZEN4_FLAGS}\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == frozenset(ZEN4_FLAGS.split())
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_cpu_vendor_is_read_from_the_first_processor(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu\n\n"
                       "processor\t: 1\nvendor_id\t: GenuineIntel\n")
    assert cpu_vendor(cpuinfo) == "AuthenticAMD"
    assert cpu_vendor(tmp_path / "missing") == ""


def test_bf16_on_a_cpu_that_has_it(simulated_cpu):
    simulated_cpu(ZEN4_FLAGS)
    assert cpu_has_bf16()
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    assert autocast_dtype("auto", CPU) is None  # fp32 stays the CPU default
    assert autocast_dtype("fp32", CPU) is None


def test_bf16_is_refused_on_a_cpu_without_it(simulated_cpu):
    simulated_cpu(AVX2_FLAGS)
    assert not cpu_has_bf16()
    with pytest.raises(PrecisionUnavailable, match="no native bf16 .*use precision fp32"):
        autocast_dtype("bf16", CPU)
    with pytest.raises(PrecisionUnavailable, match="fp16 runs on CUDA only"):
        autocast_dtype("fp16", CPU)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        autocast_dtype("half", CPU)
    assert autocast_for(CPU, "auto") == (autocast_for(CPU, "fp32")[0], None)


def test_the_trainer_refuses_bf16_on_a_cpu_without_it(simulated_cpu, tmp_path):
    simulated_cpu(AVX2_FLAGS)
    with pytest.raises(PrecisionUnavailable, match="AVX-512 BF16 nor AMX"):
        _trainer(_data(tmp_path), tmp_path / "run", precision="bf16")


def test_autocast_reaches_the_accelerated_linear_layers_in_inference():
    layer = CpuLinear(16, 8, kernel=fp32_kernel())
    x = torch.randn(2, 5, 16)
    with torch.inference_mode():
        assert layer(x).dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
    assert out.dtype == torch.bfloat16  # the oneDNN fp32 path would ignore the autocast
    torch.testing.assert_close(out.float(), torch.nn.functional.linear(x, layer.weight, layer.bias),
                               atol=0.05, rtol=0.02)


def test_the_script_flag_reaches_the_train_config():
    import argparse
    parser = argparse.ArgumentParser()
    add_training_flags(parser)
    assert TrainConfig(**train_overrides(parser.parse_args(["--precision", "bf16"]))).precision == "bf16"
    assert TrainConfig(**train_overrides(parser.parse_args([]))).precision == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "int8"])


def test_a_bf16_run_on_this_cpu_trains_fp32_weights_with_fp32_losses(tmp_path):
    """On a CPU with native bf16 the run autocasts (matmuls in bf16) and still keeps fp32 weights and
    finite fp32 losses; on one without, the same request is refused before any step."""
    data = _data(tmp_path)
    if not cpu_has_bf16():
        with pytest.raises(PrecisionUnavailable):
            _trainer(data, tmp_path / "run", precision="bf16")
        return
    trainer = _trainer(data, tmp_path / "run", precision="bf16")
    seen = []
    trainer.model.class_embed.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    result = trainer.fit()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(torch.isfinite(torch.tensor(record["train_loss"])) for record in result.history)
    assert (tmp_path / "run" / "checkpoint_best_total.pth").exists()


def _data(tmp_path):
    return make_synthetic_coco(tmp_path / "data", seed=5, num_train=2, num_valid=1, num_test=0, image_size=(96, 96))


def _trainer(data, output_dir, **overrides) -> Trainer:
    config = model_config("nano", num_classes=dataset_classes(data).num_rows - 1, num_queries=20, group_detr=2)
    train = TrainConfig(dataset_dir=str(data), output_dir=str(output_dir), epochs=1, batch_size=2, resolution=128,
                        multi_scale=False, num_workers=0, progress="none", use_ema=False, device="cpu",
                        **overrides)
    return Trainer(build_detector(config), RunConfig(stage="detector", model=config, train=train),
                   dataset_classes(data))


def test_the_wrappers_take_a_dtype_and_refuse_what_the_cpu_lacks(simulated_cpu):
    from rfdetr import RFDETRNano

    simulated_cpu(AVX2_FLAGS)
    with pytest.raises(PrecisionUnavailable, match="use precision fp32"):
        RFDETRNano(pretrain_weights=None, num_classes=2, device="cpu", dtype="bfloat16")
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'bfloat16'"):
        RFDETRNano(pretrain_weights=None, num_classes=2, device="cpu", dtype="float16")
    simulated_cpu(ZEN4_FLAGS)
    model = RFDETRNano(pretrain_weights=None, num_classes=2, device="cpu", dtype=torch.bfloat16)
    seen = []
    model.model.class_embed.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    detections = model.predict(torch.rand(3, 64, 80), threshold=0.0)
    assert seen == [torch.bfloat16] and detections.xyxy.dtype.name == "float32"
    assert len(detections) == model.config.num_select and np.isfinite(detections.xyxy).all()


def test_a_mask_model_predicts_masks_in_bf16(simulated_cpu):
    from rfdetr import RFDETRNano

    # Post-processing computes the masks after the forward's autocast has ended, from the forward's bf16
    # features: the mask head must run under the forward's autocast again.
    simulated_cpu(ZEN4_FLAGS)
    model = RFDETRNano(pretrain_weights=None, masks=True, device="cpu", num_queries=20, resolution=128,
                       dtype="bfloat16")
    fill_model_(model.model, seed=0)
    image = torch.rand(3, 96, 128)
    detections = model.predict(image, threshold=0.0)
    assert detections.mask.shape == (len(detections), 96, 128) and detections.mask.dtype == bool
    reference = RFDETRNano(pretrain_weights=None, masks=True, device="cpu", num_queries=20, resolution=128)
    reference.model.load_state_dict(model.model.state_dict())
    expected = reference.predict(image, threshold=0.0)
    agree = (detections.mask[0] == expected.mask[0]).mean()
    assert agree > 0.9, agree  # the top detection's mask, bf16 against fp32

"""Stage-1 training: parameter groups, schedule, EMA, the run's files, resume, early stopping, NaN stop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tensorboard_tags

from rfdetr.checkpoints.files import read_checkpoint
from rfdetr.config import RunConfig, TrainConfig, model_config
from rfdetr.datasets import make_synthetic_coco
from rfdetr.datasets.coco import dataset_classes
from rfdetr.models import build_detector
from rfdetr.training.early_stopping import EarlyStopping
from rfdetr.training.ema import ModelEMA
from rfdetr.training.engine import NonFiniteLossError
from rfdetr.training.optim import lr_factor, parameter_groups, parameter_settings
from rfdetr.training.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# A small, fast geometry: nano with fewer queries and groups at 256 px (16 x 16 = 256 tokens >= 50 queries).
TINY_MODEL = dict(num_queries=50, group_detr=2)
TINY_TRAIN = dict(epochs=2, batch_size=2, grad_accum_steps=1, resolution=256, multi_scale=False, num_workers=0,
                  progress="none", max_steps_per_epoch=2, use_ema=True, ema_tau=0, device="cpu")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("data"), seed=5, num_train=6, num_valid=2, num_test=2,
                               image_size=(128, 128))


def _trainer(dataset_dir, output_dir, **overrides) -> Trainer:
    config = model_config("nano", num_classes=dataset_classes(dataset_dir).num_rows - 1, **TINY_MODEL)
    torch.manual_seed(0)
    model = build_detector(config)
    train = TrainConfig(dataset_dir=str(dataset_dir), output_dir=str(output_dir), **{**TINY_TRAIN, **overrides})
    return Trainer(model, RunConfig(stage="detector", model=config, train=train), dataset_classes(dataset_dir))


def test_parameter_groups_follow_layer_decay_and_are_grouped():
    config, train = model_config("nano"), TrainConfig()
    lr, decay = parameter_settings("backbone.0.encoder.encoder.encoder.layer.11.mlp.fc1.weight", config, train)
    # n = 12 + 1 = 13, depth id 12: lr_encoder * 0.8 ** 2 * 0.7 ** 2
    assert lr == pytest.approx(1.5e-4 * 0.8**2 * 0.7**2) and decay == 1e-4
    lr, decay = parameter_settings("backbone.0.encoder.encoder.embeddings.patch_embeddings.projection.weight",
                                   config, train)
    assert lr == pytest.approx(1.5e-4 * 0.8**14 * 0.7**2) and decay == 0.0
    assert parameter_settings("backbone.0.encoder.encoder.layer.3.norm1.bias", config, train)[1] == 0.0
    assert parameter_settings("transformer.decoder.layers.0.linear1.weight", config, train) == (
        pytest.approx(1e-4 * 0.7), 1e-4)
    assert parameter_settings("class_embed.weight", config, train) == (1e-4, 1e-4)
    model = build_detector(config)
    groups = parameter_groups(model.named_parameters(), config, train)
    assert len(groups) < 40  # one per (lr, wd), not one per tensor
    grouped = sum(len(g["params"]) for g in groups)
    assert grouped == sum(1 for p in model.parameters() if p.requires_grad)
    assert len({(g["lr"], g["weight_decay"]) for g in groups}) == len(groups)
    assert [g["lr"] for g in groups if g["base"]] == [train.lr]  # the group whose lr the logs report


def test_lr_schedule_warmup_cosine_and_step():
    config = TrainConfig(epochs=10, warmup_epochs=1, lr_scheduler="cosine")
    assert lr_factor(0, steps_per_epoch=4, train_config=config) == 0.0
    assert lr_factor(2, steps_per_epoch=4, train_config=config) == 0.5
    assert lr_factor(4, steps_per_epoch=4, train_config=config) == 1.0
    assert lr_factor(22, steps_per_epoch=4, train_config=config) == pytest.approx(0.5)
    assert lr_factor(40, steps_per_epoch=4, train_config=config) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(epochs=10, lr_scheduler="step", lr_drop=3)
    assert lr_factor(11, steps_per_epoch=4, train_config=step) == 1.0
    assert lr_factor(12, steps_per_epoch=4, train_config=step) == 0.1


def test_ema_follows_the_formula():
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 2.0))
    torch.testing.assert_close(ema.module.weight, d * start + (1 - d) * model.weight.detach())
    assert not ema.module.weight.requires_grad


def test_early_stopping_counts_only_real_improvements():
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    for value in (0.1, 0.105, 0.2, 0.2):
        stopper.update(value)
    assert not stopper.should_stop
    stopper.update(0.205)
    assert stopper.should_stop and stopper.best == 0.2


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    result = _trainer(tiny_dataset, output).fit()
    return output, result


@pytest.mark.slow  # finished_run: a training run
def test_run_writes_self_describing_checkpoints_and_logs(finished_run, tiny_dataset):
    output, result = finished_run
    for name in ("checkpoint.pth", "checkpoint_best_regular.pth", "checkpoint_best_ema.pth",
                 "checkpoint_best_total.pth", "log.txt", "results.json", "train_config.json"):
        assert (output / name).is_file(), name
    assert {"train/loss", "train/loss_ce", "train/loss_giou", "val/bbox_AP"} <= tensorboard_tags(output / "tb")
    assert (output / "run_config.json").is_file()
    lines = [json.loads(line) for line in (output / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]
    assert {"train_loss", "train_lr", "valid_loss", "valid_bbox_AP", "ema_valid_bbox_AP"} <= set(lines[0])
    # train_lr is the run's lr under the schedule (mean over the epoch's steps), not the smallest group's.
    schedule = [lr_factor(step, steps_per_epoch=2, train_config=TrainConfig(**TINY_TRAIN)) for step in range(1, 5)]
    assert lines[0]["train_lr"] == pytest.approx(TrainConfig().lr * (schedule[0] + schedule[1]) / 2, rel=1e-6)
    assert lines[1]["train_lr"] == pytest.approx(TrainConfig().lr * (schedule[2] + schedule[3]) / 2, rel=1e-6)
    resumable = read_checkpoint(output / "checkpoint.pth")
    expected = {"model", "config", "classes", "epoch", "optimizer", "lr_scheduler", "ema", "trainer", "run"}
    assert expected <= set(resumable)
    assert resumable["epoch"] == 1 and resumable["classes"] == dataset_classes(tiny_dataset).to_dict()
    total = read_checkpoint(output / "checkpoint_best_total.pth")
    assert "optimizer" not in total and "test_metrics" in total
    # fit() hands back the best weights it wrote: nobody reads them back from disk
    assert result.best_weights.keys() == total["model"].keys()
    assert all(torch.equal(result.best_weights[k], v) for k, v in total["model"].items())
    assert resumable["run"]["stage"] == "detector" and "stage" not in RunConfig.model_fields
    results = json.loads((output / "results.json").read_text())
    assert results["epoch"] == result.best_epoch and "class_map" in results


@pytest.mark.slow  # finished_run: a training run
def test_run_folder_has_pictures_to_look_at(finished_run, tiny_dataset):
    from PIL import Image

    output, _ = finished_run
    with Image.open(output / "results.png") as plot:
        assert plot.size == (1400, 700) and plot.convert("L").getextrema()[0] < 128  # drawn, not blank
    with Image.open(output / "val_predictions.jpg") as grid:  # 2 validation images: a 2 x 1 grid of tiles
        assert grid.size == (2 * 320, 320)
        assert len(np.unique(np.asarray(grid.convert("RGB").resize((64, 32))).reshape(-1, 3), axis=0)) > 50  # pictures
    with Image.open(output / "confusion_matrix.png") as matrix:
        assert matrix.width > 300 and matrix.height > 300
    assert not list(output.glob(".*.tmp*"))


@pytest.mark.slow  # finished_run: a training run
def test_best_total_loads_into_the_wrapper_with_the_dataset_classes(finished_run, tiny_dataset):
    from rfdetr import RFDETRNano

    output, _ = finished_run
    model = RFDETRNano(pretrain_weights=output / "checkpoint_best_total.pth", device="cpu")
    assert model.config.num_queries == 50 and model.config.group_detr == 2  # geometry read from the checkpoint
    assert list(model.class_names.values()) == dataset_classes(tiny_dataset).names
    detections = model.predict(torch.rand(3, 100, 120), threshold=0.0)
    assert len(detections) > 0 and set(detections.class_id) <= set(model.class_names)


@pytest.mark.slow  # an interrupted and a resumed training run
def test_resume_continues_exactly(finished_run, tiny_dataset, tmp_path, monkeypatch):
    output, _ = finished_run
    interrupted = tmp_path / "interrupted"
    trainer = _trainer(tiny_dataset, interrupted)
    original = trainer._run_epoch

    def stop_at_second_epoch(epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(epoch)

    monkeypatch.setattr(trainer, "_run_epoch", stop_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert read_checkpoint(interrupted / "checkpoint.pth")["epoch"] == 0  # the last good checkpoint survives
    resumed = _trainer(tiny_dataset, interrupted, resume=str(interrupted / "checkpoint.pth"))
    assert resumed.start_epoch == 1
    resumed.fit()
    expected = read_checkpoint(output / "checkpoint.pth")
    actual = read_checkpoint(interrupted / "checkpoint.pth")
    for key, value in expected["model"].items():
        torch.testing.assert_close(actual["model"][key], value, atol=0, rtol=0, msg=key)
    for key, value in expected["ema"]["module"].items():
        torch.testing.assert_close(actual["ema"]["module"][key], value, atol=0, rtol=0, msg=key)
    assert actual["lr_scheduler"] == expected["lr_scheduler"]
    assert [json.loads(x)["train_loss"] for x in (interrupted / "log.txt").read_text().splitlines()] == \
        [json.loads(x)["train_loss"] for x in (output / "log.txt").read_text().splitlines()]


@pytest.mark.slow  # a training run
def test_early_stopping_really_stops(tiny_dataset, tmp_path):
    result = _trainer(tiny_dataset, tmp_path, epochs=6, early_stopping=True, early_stopping_patience=1,
                      early_stopping_min_delta=1.0, use_ema=False, run_test=False).fit()
    assert result.stopped_early and len(result.history) == 2


def test_nan_loss_stops_before_the_step_and_names_it(tiny_dataset, tmp_path):
    trainer = _trainer(tiny_dataset, tmp_path, use_ema=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    original = trainer.criterion.weighted_loss
    trainer.criterion.weighted_loss = lambda losses: original(losses) * float("nan")
    with pytest.raises(NonFiniteLossError, match="epoch 0, step 0"):
        trainer.fit()
    assert not (tmp_path / "checkpoint.pth").exists()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow  # a training run, then a resumed one
def test_non_finite_predictions_stop_with_the_documented_error(tiny_dataset, tmp_path):
    trainer = _trainer(tiny_dataset, tmp_path, epochs=2)
    trainer.fit()  # one good run: its checkpoint is the one to name
    trainer = _trainer(tiny_dataset, tmp_path, epochs=3, resume=str(tmp_path / "checkpoint.pth"))
    with torch.no_grad():
        trainer.model.bbox_embed.layers[-1].bias.fill_(float("nan"))  # boxes the matcher cannot match
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 0: the model's pred_boxes are "
                                                 r"not finite.*last good checkpoint is .*checkpoint.pth"):
        trainer.fit()


def test_dataset_with_other_classes_is_refused(tiny_dataset, tmp_path):
    config = model_config("nano", **TINY_MODEL)
    from rfdetr.classes import ClassTable

    with pytest.raises(ValueError, match="build the model with the dataset's classes"):
        train = TrainConfig(dataset_dir=str(tiny_dataset), output_dir=str(tmp_path), **TINY_TRAIN)
        Trainer(build_detector(config), RunConfig(stage="detector", model=config, train=train), ClassTable.coco())


def test_gradient_checkpointing_gives_the_same_gradients():
    config = model_config("nano", num_queries=50, group_detr=2)
    images = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = build_detector(config.model_copy(update={"gradient_checkpointing": enabled})).train()
        out = model(images)
        (out["pred_logits"].sigmoid().mean() + out["pred_boxes"].mean()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)



def test_multi_scale_sides_follow_the_training_resolution(tiny_dataset, tmp_path):
    # Nano (native 384) trained at 192: upstream's set scaled by 1/2 -> 128..256, not 64..352.
    relative = _trainer(tiny_dataset, tmp_path, resolution=192, multi_scale=True)
    assert relative._batch_scales() == [128, 160, 192, 224, 256]
    upstream = _trainer(tiny_dataset, tmp_path, resolution=192, multi_scale=True, relative_scales=False)
    assert upstream._batch_scales() == list(range(64, 353, 32))


@pytest.mark.slow  # a script run and an API run
def test_the_scripts_train_in_a_retained_heap_and_the_api_only_when_asked(tiny_dataset, tmp_path, monkeypatch):
    """The heap setting belongs to the whole process: the front ends (this package's processes) switch it on
    around the run; RFDETR.train() in a user's process leaves it as it was unless retain_heap=True."""
    import contextlib

    from rfdetr import RFDETRNano, api
    from rfdetr.cli.training import stage1_main
    from rfdetr.training import trainer as trainer_module
    from rfdetr.util import heap

    events = []
    real_heap, real_epoch = heap.retained_heap, trainer_module.train_one_epoch

    @contextlib.contextmanager
    def watched_heap(enabled=True):
        with real_heap(enabled) as active:
            events.append(("heap", enabled, active))
            yield active
        events.append(("heap closed",))

    def watched_epoch(*arguments, **keywords):
        events.append(("epoch",))
        return real_epoch(*arguments, **keywords)

    monkeypatch.delenv("RFDETR_CPU_HEAP", raising=False)
    monkeypatch.setattr(heap, "retained_heap", watched_heap)
    monkeypatch.setattr(api, "retained_heap", watched_heap)
    monkeypatch.setattr(trainer_module, "train_one_epoch", watched_epoch)
    assert stage1_main(["--size", "nano", "--pretrain_weights", "none", "--dataset_dir", str(tiny_dataset),
                        "--output_dir", str(tmp_path / "script"), "--epochs", "2", "--batch", "2", "--accum", "1",
                        "--resolution", "128", "--multi_scale", "0", "--workers", "0", "--device", "cpu",
                        "--num_queries", "20", "--group_detr", "1", "--tensorboard", "0", "--run_test", "0"]) == 0
    assert events == [("heap", True, True), ("epoch",), ("epoch",), ("heap closed",)]
    events.clear()
    model = RFDETRNano(pretrain_weights=None, class_names=dataset_classes(tiny_dataset).names, device="cpu",
                       resolution=128, num_queries=20, group_detr=1)
    model.train(dataset_dir=str(tiny_dataset), output_dir=str(tmp_path / "api"), epochs=1, batch_size=2,
                grad_accum_steps=1, multi_scale=False, num_workers=0, device="cpu", tensorboard=False,
                run_test=False, plots=False, progress="none")
    assert events == [("heap", False, False), ("epoch",), ("heap closed",)]

"""Checkpoint files that must be refused: damaged, foreign, malicious or inconsistent.

One table of bad files; for each, loading a model, ``shrink_head.py`` and ``strip_class_heads.py``
refuse it with an error that names the file, nothing in it is executed, and nothing is written.
"""

from __future__ import annotations

import pathlib
import pickle

import pytest
import torch

import shrink_head
import strip_class_heads
from rfdetr import RFDETRNano
from rfdetr.checkpoints.durable import save_checkpoint
from rfdetr.checkpoints.files import CheckpointError, make_checkpoint, read_checkpoint
from rfdetr.classes import ClassTable


class RunsCode:
    """Unpickling this creates ``marker``: proof that a loader executed the file's code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _truncated(source: pathlib.Path, path: pathlib.Path) -> str:
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return "cannot read checkpoint"


def _zero_bytes(source: pathlib.Path, path: pathlib.Path) -> str:
    path.write_bytes(b"")
    return "cannot read checkpoint"


def _random_bytes(source: pathlib.Path, path: pathlib.Path) -> str:
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    return "cannot read checkpoint"


def _a_text_file(source: pathlib.Path, path: pathlib.Path) -> str:
    path.write_text("epoch,step,train/loss\n0,5,7.25\n")  # a metrics.csv given by mistake
    return "cannot read checkpoint"


def _a_list(source: pathlib.Path, path: pathlib.Path) -> str:
    torch.save([torch.zeros(3)], path)
    return "holds a list, expected a dict"


def _plain_pickle(source: pathlib.Path, path: pathlib.Path) -> str:
    path.write_bytes(pickle.dumps({"model": {"w": 1}}))  # not torch's format at all
    return "cannot read checkpoint"


def _runs_code(source: pathlib.Path, path: pathlib.Path) -> str:
    torch.save({"model": {"w": torch.zeros(1)}, "payload": RunsCode(path.with_suffix(".ran"))}, path)
    return "builtins.getattr"  # the globals it would call are named (in any order); nothing is called


def _head_rows_disagree(source: pathlib.Path, path: pathlib.Path) -> str:
    checkpoint = read_checkpoint(source)
    checkpoint["model"]["class_embed.bias"] = checkpoint["model"]["class_embed.bias"][:5].clone()
    torch.save(checkpoint, path)
    return "class_embed.bias has 5 rows, the others 91"


def _two_stage_head_disagrees(source: pathlib.Path, path: pathlib.Path) -> str:
    checkpoint = read_checkpoint(source)
    key = "transformer.enc_out_class_embed.4.weight"
    checkpoint["model"][key] = checkpoint["model"][key][:3].clone()
    torch.save(checkpoint, path)
    return f"{key} has 3 rows"


BAD_FILES = {"truncated": _truncated, "zero bytes": _zero_bytes, "random bytes": _random_bytes,
             "a text file": _a_text_file, "a list": _a_list,
             "plain pickle": _plain_pickle, "runs code": _runs_code, "head rows disagree": _head_rows_disagree,
             "two-stage head disagrees": _two_stage_head_disagrees}


@pytest.fixture(params=list(BAD_FILES))
def bad_file(request, upstream_nano_file, tmp_path) -> tuple[pathlib.Path, str]:
    path = tmp_path / "bad.pth"
    return path, BAD_FILES[request.param](upstream_nano_file, path)


def test_loading_refuses_it_naming_the_file(bad_file):
    path, reason = bad_file
    with pytest.raises(CheckpointError) as refused:
        RFDETRNano(pretrain_weights=path, device="cpu")
    assert str(path) in str(refused.value) and reason in str(refused.value)
    assert not path.with_suffix(".ran").exists()


@pytest.mark.parametrize("script", ["shrink", "strip"])
def test_surgery_refuses_it_and_writes_nothing(bad_file, script, capsys):
    path, reason = bad_file
    out = path.parent / "out.pth"
    if script == "shrink":
        code = shrink_head.main(["--in_ckpt", str(path), "--out_ckpt", str(out), "--keep", "person"])
    else:
        code = strip_class_heads.main([str(path), str(out)])
    error = capsys.readouterr().err
    assert code == 2 and str(path) in error and reason in error
    assert sorted(p.name for p in path.parent.iterdir()) == ["bad.pth"]  # no output, no temporary


@pytest.mark.parametrize("field, value, names", [
    ("dec_layers", 3, "missing keys ['transformer.decoder.layers.2."),
    ("hidden_dim", 128, "transformer.decoder.layers.0.self_attn.in_proj_weight is [768, 256] in the file"),
    ("num_queries", 500, "refpoint_embed.weight is [3900, 4] in the file but [6500, 4]"),
])
def test_a_stored_config_that_disagrees_with_the_tensors_is_refused(field, value, names, filled_detectors,
                                                                   tmp_path):
    config = filled_detectors["nano"].config
    checkpoint = make_checkpoint(filled_detectors["nano"], config, ClassTable.coco())
    path = save_checkpoint({**checkpoint, "config": {**checkpoint["config"], field: value}}, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError) as refused:
        RFDETRNano(pretrain_weights=path, device="cpu")
    assert str(path) in str(refused.value) and names in str(refused.value)

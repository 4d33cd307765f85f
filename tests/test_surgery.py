"""shrink_head.py and strip_class_heads.py on an upstream-format COCO nano checkpoint."""

from __future__ import annotations

import skimage.data
import torch
from test_lwdetr import ProposalRecorder

import shrink_head
import strip_class_heads
from rfdetr import RFDETRNano
from rfdetr.checkpoints.files import read_checkpoint
from rfdetr.inference import prepare_batch


def test_shrink_keeps_the_named_classes_in_every_head(upstream_nano_file, tmp_path, capsys):
    out = tmp_path / "person-dog.pth"
    assert shrink_head.main(["--in_ckpt", str(upstream_nano_file), "--out_ckpt", str(out),
                             "--keep", "person", "dog"]) == 0
    assert "91 -> 3 rows" in capsys.readouterr().out
    full_state = read_checkpoint(upstream_nano_file)["model"]
    state = read_checkpoint(out)["model"]
    heads = [k for k in state if "class_embed" in k]
    assert len(heads) == 2 * 14 and all(state[k].shape[0] == 3 for k in heads)
    assert torch.equal(state["transformer.enc_out_class_embed.7.weight"],
                       full_state["transformer.enc_out_class_embed.7.weight"][[1, 18, 83]])

    full = RFDETRNano(pretrain_weights=upstream_nano_file, device="cpu")
    shrunk = RFDETRNano(pretrain_weights=out, device="cpu")
    assert shrunk.class_names == {0: "person", 1: "dog"}
    images, _, _ = prepare_batch(skimage.data.astronaut(), shrunk.config.resolution)
    with torch.no_grad(), ProposalRecorder(full.model.transformer) as recorder:
        full_out = full.model(images)
    # Proposal ranking takes the max over the classes a head has; with the same proposals the kept
    # classes' scores and all boxes are identical.
    with torch.no_grad(), ProposalRecorder(shrunk.model.transformer, forced=recorder.indices):
        shrunk_out = shrunk.model(images)
    # Same weights; a narrower matrix product may only round differently (GEMM blocking).
    torch.testing.assert_close(shrunk_out["pred_logits"][..., :2], full_out["pred_logits"][..., [1, 18]],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(shrunk_out["pred_boxes"], full_out["pred_boxes"], atol=1e-6, rtol=0)


def test_shrink_refuses_unknown_and_duplicate_names(upstream_nano_file, tmp_path, capsys):
    out = tmp_path / "bad.pth"
    assert shrink_head.main(["--in_ckpt", str(upstream_nano_file), "--out_ckpt", str(out),
                             "--keep", "person", "unicorn"]) == 2
    error = capsys.readouterr().err
    assert "unknown class names ['unicorn']" in error and "toothbrush" in error
    assert shrink_head.main(["--in_ckpt", str(upstream_nano_file), "--out_ckpt", str(out),
                             "--keep", "dog", "dog"]) == 2
    assert "more than once" in capsys.readouterr().err
    assert not out.exists()


def test_stripped_checkpoint_loads_with_any_class_count(upstream_nano_file, tmp_path):
    out = tmp_path / "stripped.pth"
    assert strip_class_heads.main([str(upstream_nano_file), str(out)]) == 0
    state = read_checkpoint(out)["model"]
    assert not [k for k in state if "class_embed" in k]
    model = RFDETRNano(pretrain_weights=out, class_names=["a", "b", "c"], device="cpu")
    assert model.model.class_embed.out_features == 4
    assert torch.equal(model.model.bbox_embed.layers[0].weight, state["bbox_embed.layers.0.weight"])
    assert torch.equal(model.model.backbone[0].encoder.encoder.layernorm.weight,
                       state["backbone.0.encoder.encoder.layernorm.weight"])


def test_scripts_report_missing_input(tmp_path, capsys):
    assert strip_class_heads.main([str(tmp_path / "none.pth"), str(tmp_path / "out.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err

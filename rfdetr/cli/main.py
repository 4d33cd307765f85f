"""The ``rfdetr`` command: one entry point for every script, each sub-command the script's own code.

    rfdetr predict WEIGHTS SOURCE... [--out DIR] [--threshold T]
    rfdetr train {detector,masks,single-stage} ...     (= train_detector_stage1.py / train_seg_stage2.py /
                                                          train_seg_single_stage.py, same flags)
    rfdetr validate ...                                (= validate_setup.py)
    rfdetr export WEIGHTS [--out DIR] [--quantize int8]
    rfdetr shrink ... / rfdetr strip ...               (= shrink_head.py / strip_class_heads.py)

``rfdetr SUB-COMMAND --help`` shows each one's flags and an example.
"""

from __future__ import annotations

import sys
from typing import Callable


def _commands() -> dict[str, tuple[str, Callable[[list[str]], int]]]:
    from rfdetr.cli import export, predict, shrink, strip, validate

    return {
        "predict": ("detect/segment objects in images; annotated copies + COCO results JSON", predict.predict_main),
        "train": ("train: detector (stage 1), masks (stage 2) or single-stage", _train),
        "validate": ("check the environment and a COCO or YOLO dataset folder", validate.main),
        "export": ("export a checkpoint to ONNX (optionally int8)", export.export_main),
        "shrink": ("keep only some classes of a checkpoint's class heads", shrink.shrink_main),
        "strip": ("remove the class heads of a checkpoint", strip.strip_main),
    }


TRAIN_KINDS = {"detector": "stage1_main", "masks": "stage2_main", "single-stage": "single_stage_main"}


def _train(argv: list[str], prog: str = "rfdetr train") -> int:
    from rfdetr.cli import training

    if not argv or argv[0] in ("-h", "--help") or argv[0] not in TRAIN_KINDS:
        print("usage: rfdetr train {detector,masks,single-stage} [flags]\n\n"
              "  detector       stage 1: fine-tune the detector      (train_detector_stage1.py)\n"
              "  masks          stage 2: mask head on a frozen detector (train_seg_stage2.py)\n"
              "  single-stage   detector and mask head together       (train_seg_single_stage.py)\n\n"
              "example: rfdetr train detector --size nano --dataset_dir dataset --epochs 50\n"
              "`rfdetr train KIND --help` lists the flags.", file=sys.stdout if argv else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return getattr(training, TRAIN_KINDS[argv[0]])(argv[1:], prog=f"rfdetr train {argv[0]}")


def usage(commands: dict) -> str:
    lines = ["usage: rfdetr SUB-COMMAND [flags]", "", "RT-DETR-Seg: RF-DETR detection and instance segmentation.", ""]
    lines += [f"  {name:<9} {text}" for name, (text, _) in commands.items()]
    lines += ["", "example: rfdetr predict runs/detector_nano_384_1/checkpoint_best_total.pth photos/ --out preds",
              "`rfdetr SUB-COMMAND --help` shows its flags and an example."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(commands), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"rfdetr: unknown sub-command {name!r}\n\n{usage(commands)}", file=sys.stderr)
        return 2
    return commands[name][1](rest, prog=f"rfdetr {name}")


if __name__ == "__main__":
    sys.exit(main())

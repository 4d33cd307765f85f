"""The setup check: ``validate_setup.py``."""

from __future__ import annotations

import argparse

from rfdetr.cli.common import command_doc

VALIDATE_DOC = """Check the environment and lint a COCO or YOLO dataset folder before training.

    {prog} --dataset_dir dataset --stage 1
    {prog} --dataset_dir dataset --stage 2 --skip_env   # masks required on every object

Expects <dataset_dir>/{train,valid,test}/_annotations.coco.json with the images beside each JSON file
(test is optional), or a YOLO folder: data.yaml naming the classes and the train/val[/test] image folders,
one labels/*.txt per image (class cx cy w h, or class x1 y1 x2 y2 ... polygons; values in [0, 1]); label
problems are named as file:line. Prints one PASS/WARN/FAIL line per check, naming the file and the first offending
image/annotation ids, then a summary. Exit code 0 when nothing FAILs, 1 otherwise, 2 for usage errors.
"""


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=command_doc(VALIDATE_DOC, prog, "validate_setup.py"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", default="dataset",
                        help="dataset folder: train/, valid/, test/ (COCO) or a data.yaml (YOLO)")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1,
                        help="training stage to check for: 1 = boxes, 2 = masks (every non-crowd object needs one)")
    parser.add_argument("--skip_env", action="store_true", help="skip the Python/dependency/GPU checks")
    parser.add_argument("--no_decode", action="store_true",
                        help="read only image headers (existence and size) instead of decoding every image")
    args = parser.parse_args(argv)

    from rfdetr.validation import Level, validate

    print("=" * 72)
    print(f"RT-DETR-Seg setup check: dataset {args.dataset_dir!r}, stage {args.stage}")
    print("=" * 72)
    report = validate(args.dataset_dir, stage=args.stage, check_env=not args.skip_env, decode=not args.no_decode)
    section = None
    for result in report.results:
        heading = "Environment" if result.section == "env" else "Dataset"
        if heading != section:
            section = heading
            print(f"\n-- {heading} --")
        print(result)
    print()
    for line in report.summary_lines():
        print(line)
    failures = report.counts()[Level.FAIL]
    print("OK: ready to train." if report.ok else f"{failures} check(s) FAILED: fix them before training.")
    return 0 if report.ok else 1


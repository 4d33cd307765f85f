"""One upstream ``rfdetr==1.2.1`` training step, timed: the reference of ``bench_train.py --upstream-python``.

Run by ``bench_train.py`` with the interpreter of a side venv that has ``rfdetr==1.2.1`` installed,
from a scratch folder (so that ``import rfdetr`` is upstream's, not this project's)::

    /path/to/side-venv/bin/python benchmarks/upstream_train_step.py BATCH.pt SETTINGS_JSON

``BATCH.pt`` holds the batch ``bench_train.py`` times for the project (``images [B, 3, R, R]``, the
padding mask and the targets), so both step on the same pixels. The step is upstream's training
loop body with ``grad_accum_steps=1``: ``model(samples, targets)``, ``criterion``, the weighted sum,
backward, ``clip_grad_norm_(0.1)``, AdamW over upstream's parameter groups, ``zero_grad``. fp32 on
CPU. Prints one ``BENCH_RESULT {json}`` line: median/min/max seconds per step, peak RSS (MB), the
first loss.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time

import torch


def main(batch_file: str, settings_json: str) -> None:
    from rfdetr.main import populate_args
    from rfdetr.util.get_param_dicts import get_param_dict
    from rfdetr.util.misc import NestedTensor

    from rfdetr import RFDETRNano
    from rfdetr.config import TrainConfig
    from rfdetr.models import build_criterion_and_postprocessors

    settings = json.loads(settings_json)
    torch.set_num_threads(settings["threads"])
    torch.manual_seed(0)
    batch = torch.load(batch_file)
    wrapper = RFDETRNano(pretrain_weights=None, num_classes=settings["num_classes"],
                         resolution=settings["resolution"], device="cpu")
    train = TrainConfig(dataset_dir=".", batch_size=len(batch["targets"]), grad_accum_steps=1, device="cpu")
    args = populate_args(**{**wrapper.model_config.dict(), **train.dict(), "num_classes": settings["num_classes"],
                            "device": "cpu"})
    criterion, _ = build_criterion_and_postprocessors(args)
    model = wrapper.model.model
    model.train()
    criterion.train()
    groups = [group for group in get_param_dict(args, model) if group["params"].requires_grad]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    samples = NestedTensor(batch["images"], batch["mask"])
    targets = batch["targets"]
    losses = []

    def step() -> None:
        outputs = model(samples, targets)
        terms = criterion(outputs, targets)
        loss = sum(terms[k] * criterion.weight_dict[k] for k in terms if k in criterion.weight_dict)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_max_norm)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))

    for _ in range(settings["warmup"]):
        step()
    times = []
    for _ in range(settings["steps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    print("BENCH_RESULT " + json.dumps({
        "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times,
        "peak_rss_mb": peak_rss_mb, "first_loss": losses[0], "group_detr": args.group_detr,
        "num_queries": args.num_queries, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

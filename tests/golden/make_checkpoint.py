"""Reference writer of upstream-format checkpoints ({'model': state_dict, 'args': Namespace}).

The keys, shapes and dtypes (and their order) come from keys_<size>.txt, the weights from
fill_weights.py and the 'args' object from checkpoint_<size>_args.pth (only nano has one), all in
this folder. The reference data's make_checkpoint.py without its module docstring and command
line, copied by tools/trim_goldens.py; the tests call write_checkpoint().
"""

import argparse
from pathlib import Path

import torch
from fill_weights import fill_state_dict

HERE = Path(__file__).resolve().parent


def read_keys(path):
    """keys_<size>.txt -> {key: empty tensor of that shape and dtype}, in file order."""
    sd = {}
    for line in Path(path).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        dims = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
        sd[key] = torch.empty(dims, dtype=getattr(torch, dtype))
    return sd


def load_args(path):
    """The argparse.Namespace stored by upstream; torch>=2.6 needs it allow-listed for weights_only."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)["args"]


def write_checkpoint(size, seed, out, ref_dir=HERE):
    ref_dir = Path(ref_dir)
    state = fill_state_dict(read_keys(ref_dir / f"keys_{size}.txt"), seed)
    args = load_args(ref_dir / f"checkpoint_{size}_args.pth")
    torch.save({"model": state, "args": args}, out)
    return out

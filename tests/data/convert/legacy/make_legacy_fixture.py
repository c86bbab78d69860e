"""Writes tests/data/convert/legacy/state_dict.pth: a state dict in torch's legacy (pre-1.6)
format, with what the legacy reader must get right: float32 / float64 / int64 / float16 storages,
a transposed (non-contiguous) tensor, two tensors viewing one storage at different offsets, a
0-d tensor; and checkpoint.pth, a dict with the state dict under 'state_dict'. Every value is a
formula the test repeats. Run once in the scratch torch venv of
tests/data/make_lpips_fixture.py:

    /tmp/scratch-torch/bin/python tests/data/convert/legacy/make_legacy_fixture.py
"""
import os
from collections import OrderedDict

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "state_dict.pth")

base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8 - 1
shared = torch.arange(10, dtype=torch.float32) * 0.5
state = OrderedDict([
    ("conv.weight", base),
    ("conv.weight_t", base.t()),                           # non-contiguous view of base
    ("head", shared[:4]),                                  # shares storage with 'tail'
    ("tail", shared[6:]),                                  # offset 6 into the same storage
    ("double", torch.linspace(-2, 2, 5, dtype=torch.float64)),
    ("steps", torch.tensor(7, dtype=torch.int64)),         # 0-d
    ("half", torch.tensor([0.5, -1.25, 3.0], dtype=torch.float16)),
])
torch.save(state, OUT, _use_new_zipfile_serialization=False)
print("wrote", OUT, os.path.getsize(OUT), "bytes")
# A training checkpoint holding the state dict under 'state_dict' (read as that state dict).
NESTED = os.path.join(os.path.dirname(OUT), "checkpoint.pth")
torch.save({"epoch": 3, "state_dict": OrderedDict([("w", base[:2])])}, NESTED,
           _use_new_zipfile_serialization=False)
print("wrote", NESTED, os.path.getsize(NESTED), "bytes")

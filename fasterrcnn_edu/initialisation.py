"""Fresh weights drawn on the CPU and copied to the parameter's device: one seed, one set of weights.

`nn.init.normal_(weight, generator=g)` draws on the weight's device and needs a generator of that
device: a CPU generator and a CUDA (or MPS) weight raise "Expected a 'cuda' device type for
generator". Drawing on the CPU, then copying, works on every device, and the same seed gives
bit-identical weights on all of them (CUDA's Philox stream differs from the CPU's Mersenne Twister).
"""
from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def normal_(weight: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """Fill `weight` (any shape, any device) in place with N(0, std²) draws made on the CPU from
    `generator` (a CPU generator; None: torch's global CPU generator), as float32, then copied in."""
    draws = torch.empty(weight.shape, dtype=torch.float32, device="cpu").normal_(0.0, std, generator=generator)
    return weight.copy_(draws)

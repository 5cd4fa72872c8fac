"""What every exercise is made of: its cases, its reference, and how a difference is put in words."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass
class Case:
    """One input of an exercise: a short description, the arguments, and a hint shown if it fails.
    `reference_args`, if given, are what the package's reference gets instead of `args` (the same
    input in the package's own form, e.g. logits where the reader gets probabilities)."""

    description: str
    args: tuple
    hint: str = ""
    reference_args: tuple | None = None


@dataclass
class CheckResult:
    """What `check` found. True (in an `if`) when every case passes."""

    name: str
    passed: int
    total: int
    message: str

    @property
    def ok(self) -> bool:
        return self.passed == self.total

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return self.message

    __str__ = __repr__


@dataclass(frozen=True)
class Exercise:
    """An exercise: its cases, the package's reference (bound when the module is imported), how to
    compare a result with the reference's (None when equal, else the difference in words), the
    signature the reader writes, and optionally a `probe` run after the cases, given a function
    that calls the reader's code safely (for properties no single case shows, e.g. randomness)."""

    cases: Callable[[], list[Case]]
    reference: Callable
    compare: Callable[[Case, object, object], str | None]
    signature: str
    probe: Callable[[Callable], str | None] | None = None


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def random_boxes(generator: torch.Generator, n: int, size: float = 100.0, max_side: float = 60.0) -> Tensor:
    """n random boxes (n, 4) with corners in [0, size) and sides in [1, max_side], rounded to 0.1 pixel."""
    top_left = torch.rand(n, 2, generator=generator) * size
    sides = 1.0 + torch.rand(n, 2, generator=generator) * (max_side - 1.0)
    return torch.cat([top_left, top_left + sides], dim=1).round(decimals=1)


def boxes(rows) -> Tensor:
    """A (N, 4) float32 tensor from a list of rows (N may be 0)."""
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------
# Words
# ---------------------------------------------------------------------------------------------
def fmt(x: Tensor) -> str:
    """[1, 2.5, 3] for a 1-D tensor."""
    return "[" + ", ".join(f"{v:.4g}" for v in torch.as_tensor(x).flatten().tolist()) + "]"


def as_tensor(got, what: str = "a tensor") -> tuple[Tensor | None, str | None]:
    """The reader's result as a CPU tensor, or (None, why not) in words: not a tensor, or on another device."""
    if not torch.is_tensor(got):
        try:
            got = torch.as_tensor(got)
        except Exception:
            return None, f"expected {what}, got {type(got).__name__}"
    if got.device.type != "cpu":
        return None, (f"your result is on device {got.device}, but the inputs are on the CPU: make new tensors "
                      f"on the inputs' device (e.g. `torch.zeros(..., device=boxes.device)`)")
    return got.detach(), None


def shape_difference(expected: Tensor, got: Tensor, meaning: str = "") -> str | None:
    if tuple(got.shape) != tuple(expected.shape):
        return f"expected a result of shape {tuple(expected.shape)}{meaning}, got {tuple(got.shape)}"
    return None


def first_mismatch(expected: Tensor, got: Tensor, atol: float = 1e-4, rtol: float = 1e-4) -> tuple | None:
    """The index of the first element where got differs from expected (NaN only matches NaN), or None."""
    bad = ~torch.isclose(got.double(), expected.double(), atol=atol, rtol=rtol, equal_nan=True)
    if not bad.any():
        return None
    return tuple(int(v) for v in bad.nonzero()[0])


def tensor_difference(expected: Tensor, got, what: str, meaning: str = "", atol: float = 1e-4,
                      rtol: float = 1e-4) -> tuple[Tensor | None, tuple | None, str | None]:
    """`as_tensor`, `shape_difference` and `first_mismatch` in turn: (the reader's result as a CPU tensor,
    the index of its first wrong element or None, why it cannot be compared or None)."""
    got, problem = as_tensor(got, what)
    if problem is None:
        problem = shape_difference(expected, got, meaning)
    if problem is not None:
        return got, None, problem
    return got, first_mismatch(expected, got, atol=atol, rtol=rtol), None


def indices(got) -> tuple[list[int] | None, str | None]:
    """The reader's result as a list of whole-number indices, or (None, why not)."""
    tensor, problem = as_tensor(got, "a tensor of indices")
    if problem:
        return None, problem
    tensor = tensor.flatten()
    if tensor.is_floating_point():
        if not torch.isfinite(tensor).all() or (tensor != tensor.round()).any():
            return None, (f"expected whole-number indices (int64), got {tensor.dtype} values "
                          f"{fmt(tensor[:8])}{' …' if len(tensor) > 8 else ''}")
    elif tensor.dtype == torch.bool:
        return None, "expected indices (int64), got a boolean mask: turn it into indices with `torch.nonzero(mask)`"
    return [int(v) for v in tensor.tolist()], None

"""How `check` runs the reader's code safely: a timeout, a copy of every input, and a watch on the package.

- **Timeout.** In the main thread (a notebook kernel runs every cell there, on Linux) a `SIGALRM`
  timer (`signal.setitimer`) interrupts the reader's function, even inside `time.sleep`; in any
  other thread a watchdog thread raises the same exception in the caller's thread
  (`PyThreadState_SetAsyncExc`), which takes effect at the next Python instruction. The exception
  derives from `BaseException`, so a reader's `except Exception:` cannot swallow it.
- **Inputs.** The reader's function gets copies; if a copy changes, the function mutates its inputs.
- **The package.** `Snapshot` records, when `fasterrcnn_edu.exercises` is imported (before any
  reader's code runs), every function and class of the modules the references use, with their
  code objects. `check` verifies it before and after each call of the reader's function: a patch
  is undone at once and reported, so it can neither pass a check nor leak into a later one.
"""
from __future__ import annotations

import ctypes
import importlib
import signal
import threading
import types
from typing import Callable

import torch

# The modules whose functions the references call (directly or through each other), and the
# torchvision kernels behind the fast paths.
WATCHED = ("fasterrcnn_edu.boxes", "fasterrcnn_edu.anchors", "fasterrcnn_edu.labeling", "fasterrcnn_edu.losses",
           "fasterrcnn_edu.nms", "fasterrcnn_edu.proposals", "fasterrcnn_edu.roi_heads", "fasterrcnn_edu.evaluation",
           "fasterrcnn_edu.pieces", "fasterrcnn_edu.exercises.core", "fasterrcnn_edu.exercises.ex_boxes",
           "fasterrcnn_edu.exercises.ex_losses", "fasterrcnn_edu.exercises.ex_detection", "torchvision.ops",
           "torchvision.ops.boxes", "torchvision.ops.roi_pool")


class TimeUp(BaseException):
    """The reader's function ran past its time (a BaseException: `except Exception` does not catch it)."""


def call_with_timeout(fn: Callable, args: tuple, seconds: float):
    """fn(*args), interrupted by `TimeUp` after `seconds` (see the module docstring for how)."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def alarm(signum, frame):
            raise TimeUp
        previous = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    caller = threading.get_ident()
    done = threading.Event()

    def watchdog():
        if not done.wait(seconds):
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(caller), ctypes.py_object(TimeUp))
    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        return fn(*args)
    finally:
        done.set()
        thread.join()


def copy_args(args: tuple) -> tuple:
    """Fresh copies of the tensors among `args` (and in lists or tuples of them); other values as they are.
    A torch.Generator is re-created with the same state, so every call sees the same random numbers."""
    def copy(value):
        if torch.is_tensor(value):
            return value.clone()
        if isinstance(value, (list, tuple)):
            return type(value)(copy(v) for v in value)
        if isinstance(value, torch.Generator):
            fresh = torch.Generator(device=value.device)
            fresh.set_state(value.get_state())
            return fresh
        return value
    return tuple(copy(a) for a in args)


def changed_arguments(before: tuple, after: tuple) -> list[int]:
    """Positions (0-based) of the tensor arguments whose values differ between two copies."""
    def same(a, b) -> bool:
        if torch.is_tensor(a):
            return (a.shape == b.shape and a.dtype == b.dtype
                    and bool(torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())
                             if a.is_floating_point() else torch.equal(a, b)))
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return True
    return [i for i, (a, b) in enumerate(zip(before, after)) if not same(a, b)]


class Snapshot:
    """The functions and classes of the watched modules, and their code objects, as they are now."""

    def __init__(self, modules=WATCHED):
        self.entries: list[tuple[types.ModuleType, str, object, object]] = []
        for module_name in modules:
            module = importlib.import_module(module_name)
            for name, value in vars(module).items():
                if isinstance(value, (types.FunctionType, type)) or callable(value) and not isinstance(value, types.ModuleType):
                    self.entries.append((module, name, value, getattr(value, "__code__", None)))

    def restore(self) -> list[str]:
        """Put back every entry that was replaced (or whose code was swapped); returns their dotted names."""
        patched = []
        for module, name, value, code in self.entries:
            if getattr(module, name, None) is not value:
                setattr(module, name, value)
                patched.append(f"{module.__name__}.{name}")
            if code is not None and value.__code__ is not code:
                value.__code__ = code
                patched.append(f"{module.__name__}.{name}.__code__")
        return patched

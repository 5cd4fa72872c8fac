"""`check(name, fn)`: the reader's function against the package's, case by case, safely."""
from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping

from fasterrcnn_edu import pieces
from fasterrcnn_edu.exercises import ex_boxes, ex_detection, ex_losses
from fasterrcnn_edu.exercises.core import Case, CheckResult, Exercise
from fasterrcnn_edu.exercises.guard import Snapshot, TimeUp, call_with_timeout, changed_arguments, copy_args

# Read-only, like every Exercise in it: a reader's code cannot swap a reference through the table.
EXERCISES: Mapping[str, Exercise] = MappingProxyType({**ex_boxes.EXERCISES, **ex_losses.EXERCISES,
                                                     **ex_detection.EXERCISES})

# Taken now, when the package is imported and before any reader's code runs (see guard.py).
SNAPSHOT = Snapshot()

ARGUMENT_NAMES = {"iou": ("boxes1", "boxes2"), "nms": ("boxes", "scores"), "encode": ("anchors", "boxes"),
                  "decode": ("anchors", "deltas"), "label_anchors": ("anchors", "gt_boxes"),
                  "sample_anchors": ("labels",), "roi_max_pool": ("features", "roi"), "roi_pool": ("features", "rois"),
                  "grid_anchors": ("base",), "average_precision": ("recall", "precision"),
                  "rpn_loss": ("logits", "deltas", "target_deltas", "labels"),
                  "proposals": ("anchors", "scores", "deltas"),
                  "sample_rois": ("proposals", "gt_boxes", "gt_labels")}


def cases(name: str) -> list[Case]:
    """The inputs `check(name, ...)` uses, to try one by hand."""
    return exercise(name).cases()


def exercise(name: str) -> Exercise:
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; choose one of {sorted(EXERCISES)}")
    return EXERCISES[name]


def _patch_note(patched: list[str]) -> str:
    return (f"{', '.join(patched)} had been replaced; the checker put the package's own back (a solution must not "
            f"change the package: write your own function instead)")


def _run(name: str, fn: Callable, args: tuple, timeout: float) -> tuple[object, str | None]:
    """Call fn on copies of args: (result, None), or (None, what went wrong in words)."""
    given = copy_args(args)
    pristine = copy_args(args)
    try:
        with pieces.package_only():          # the reader's function sees the package's pieces, not a `use` block's
            got = call_with_timeout(fn, given, timeout)
    except TimeUp:
        return None, (f"did not finish within {timeout:g} s: a loop that never ends? (e.g. a `while` loop whose "
                      f"list of remaining boxes never shrinks)")
    except NotImplementedError:
        raise
    except Exception as error:  # the reader's code may fail in any way: say how
        return None, f"raised {type(error).__name__}: {error}"
    finally:
        patched = SNAPSHOT.restore()
    if patched:
        return None, "changed the package while it ran: " + _patch_note(patched)
    changed = changed_arguments(pristine, given)
    if changed:
        names = ARGUMENT_NAMES.get(name, ())
        which = ", ".join(f"`{names[i]}`" if i < len(names) else f"argument {i + 1}" for i in changed)
        return None, (f"changed its input {which} in place: work on a copy (`x = x.clone()`) or use out-of-place "
                      f"operations (`a = a - b`, not `a -= b`)")
    return got, None


def check(name: str, fn: Callable, verbose: bool = True, timeout: float = 10.0) -> CheckResult:
    """Test the reader's `fn` against the package on every case of exercise `name`; stop at the first difference.

    Prints the result (unless `verbose=False`) and returns it: "all N cases pass", or which case
    differs, what was expected, what `fn` returned and a hint. Each call of `fn` gets `timeout`
    seconds and copies of the inputs; the expected answers are computed first, by the references
    bound when this module was imported, with every piece the package's own.
    """
    ex = exercise(name)
    notes = []
    patched = SNAPSHOT.restore()
    if patched:
        notes.append("note: before this check, " + _patch_note(patched))
    all_cases = ex.cases()
    total = len(all_cases) + (ex.probe is not None)
    with pieces.package_only():
        expected = [ex.reference(*copy_args(c.reference_args if c.reference_args is not None else c.args))
                    for c in all_cases]
    result = None
    for index, (case, want) in enumerate(zip(all_cases, expected)):
        where = f"{name}: case {index + 1} of {total} ({case.description})"
        try:
            got, problem = _run(name, fn, case.args, timeout)
        except NotImplementedError:
            result = CheckResult(name, 0, total, f"{name}: not written yet. Replace `raise NotImplementedError` by "
                                                 f"your code ({ex.signature}), then run this cell again.")
            break
        if problem:
            result = CheckResult(name, index, total, f"{where} {problem}")
            break
        try:
            difference = ex.compare(case, want, got)
        except Exception as error:  # a result of an unexpected kind must not crash the checker
            difference = (f"your result could not be compared with the expected one ({type(error).__name__}: {error}); "
                          f"it should be {ex.signature.split('->')[-1].strip()}")
        if difference is not None:
            hint = f"\n  hint: {case.hint}" if case.hint else ""
            result = CheckResult(name, index, total, f"{where} differs:\n  {difference}{hint}")
            break
    if result is None and ex.probe is not None:
        def call(args):
            got, problem = _run(name, fn, args, timeout)
            return problem if problem else got
        problem = ex.probe(call)
        if problem:
            result = CheckResult(name, total - 1, total, f"{name}: case {total} of {total} (randomness) differs:\n  {problem}")
    if result is None:
        result = CheckResult(name, total, total, f"{name}: all {total} cases pass")
    if notes:
        result.message = "\n".join(notes + [result.message])
    if verbose:
        print(result)
    return result

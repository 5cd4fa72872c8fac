"""Command-line interface: `python -m fasterrcnn_edu COMMAND --help`.

Each command lives next to the code it drives; a module contributes its sub-commands through a
`register(subparsers, formatter_class)` function, listed in `COMMAND_MODULES` below: first the
detector's own commands, then the lab's (the book's experiments, benchmarks and comparisons).
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "fasterrcnn_edu.data.commands",         # make-data, check-data
    "fasterrcnn_edu.commands",              # train, eval, detect
    "fasterrcnn_edu.lab.pretrain",          # pretrain
    "fasterrcnn_edu.lab.experiments",       # lambda-sweep
    "fasterrcnn_edu.lab.ablations",         # ablation recall|test-time|anchors
    "fasterrcnn_edu.lab.profiling",         # profile
    "fasterrcnn_edu.lab.bench",             # bench
    "fasterrcnn_edu.lab.side_by_side",      # side-by-side
    "fasterrcnn_edu.lab.error_report",      # errors
    "fasterrcnn_edu.lab.capstone",          # capstone
    "fasterrcnn_edu.lab.ddp_traffic",       # ddp-traffic
    "fasterrcnn_edu.lab.reproduce",         # reproduce
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults in every --help and keeps the descriptions' line breaks."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fasterrcnn_edu", formatter_class=_HelpFormatter,
                                     description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers, _HelpFormatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, check every option (`options.check_arguments`), run the command.

    A user's mistake never ends in a traceback: a bad option is one line `error: ...` and status 2;
    a file that cannot be used (data, checkpoint, weights) or a run that had to stop is one line and
    status 1; Ctrl-C is status 130.
    """
    from fasterrcnn_edu.checkpoint import CheckpointError
    from fasterrcnn_edu.commands import PeerStoppedError
    from fasterrcnn_edu.config import ConfigError
    from fasterrcnn_edu.data.errors import DataError
    from fasterrcnn_edu.options import UsageError, check_arguments
    from fasterrcnn_edu.training import NonFiniteLossError

    args = build_parser().parse_args(argv)
    try:
        check_arguments(args, args.command)
        return int(args.func(args) or 0)
    except (UsageError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, NonFiniteLossError, PeerStoppedError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

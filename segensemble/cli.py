"""Command line: ``ensemble <command>`` and ``pseudo-label``. Each handler parses, calls one library
function and prints; torch is imported only by the commands that export (export, build, demo)."""

from __future__ import annotations

import argparse
import logging
import sys

from segensemble.commands import analyze, build, check_submission, demo, evaluate, export, predict, pseudo, serve, triton, tune
from segensemble.errors import SegEnsembleError
from segensemble.extras import missing_extra

COMMANDS = (export, build, predict, check_submission, evaluate, analyze, tune, pseudo, serve, triton, demo)

def build_parser(script: str | None = None) -> argparse.ArgumentParser:
    """The ``ensemble`` parser; ``script`` names a command run as its own console script (its --help says so)."""
    parser = argparse.ArgumentParser(prog="ensemble", description="Segmentation ensembles: plan, export, build, predict, "
                                     "evaluate, pseudo-label and serve, on ONNX Runtime.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add(sub)
    if script:
        sub.choices[script].prog = script
    return parser


def main(argv: list[str] | None = None, script: str | None = None) -> int:
    args = build_parser(script).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return _run(args)


def _run(args) -> int:
    try:
        return args.func(args)
    except SegEnsembleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an extra that is not installed: one line with its pip install, not a traceback
        missing = missing_extra(exc, f"ensemble {args.command}")
        if missing is None:
            raise
        print(f"error: {missing}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, permission denied, ...: the file and the reason, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


def pseudo_label_main(argv: list[str] | None = None) -> int:
    """The ``pseudo-label`` console script: same as ``ensemble pseudo-label``, and its --help says so."""
    return main(["pseudo-label", *(sys.argv[1:] if argv is None else argv)], script="pseudo-label")


if __name__ == "__main__":
    sys.exit(main())

"""The ``label-studio-decomp`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their subcommand runs, so ``--help`` stays fast and light.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ml_backend import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "connect": ("ml_backend.commands.connect", "connect the backend to a Label Studio project and check it"),
    "reprioritize": ("ml_backend.commands.reprioritize", "reorder a project's queue by DECOMP priority"),
    "demo": ("ml_backend.commands.demo", "start Label Studio + the backend on a demo project (Ctrl-C stops)"),
    "serve": ("ml_backend.commands.serve", "serve the DECOMP ML backend for Label Studio (gunicorn)"),
    "simulate": ("ml_backend.commands.simulate", "replay DECOMP and the baselines on a labelled dataset"),
    "bench": ("ml_backend.commands.bench", "measure selection cost and the prediction path on this machine"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="label-studio-decomp",
        description="DECOMP active learning for Label Studio: serve the ML backend, reorder the queue, "
        "simulate and benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return importlib.import_module(args._module).run(args)


if __name__ == "__main__":
    sys.exit(main())

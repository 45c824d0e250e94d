"""Entry point of the `lamamba` console command."""

from __future__ import annotations

import argparse
import importlib
import sys

from launcher.commands import COMMANDS
from launcher.errors import LaunchError
from lamamba.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamamba",
        description="Train and evaluate LaMamba-Diff latent diffusion models, locally or on a cluster.",
        epilog="Run `lamamba COMMAND --help` for the options of one command.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"launcher.commands.{name.replace('-', '_')}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a command line; key=value overrides may also follow the options
    (``lamamba submit train CFG --backend slurm data.manifest=...``): argparse ends a positional
    list at the first option and would reject the ones after it."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "overrides", None) is None or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ConfigError as err:
        print(f"lamamba {args.command}: config error: {err}", file=sys.stderr)
        return 2
    except LaunchError as err:
        print(f"lamamba {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lamamba {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

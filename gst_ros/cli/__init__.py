"""The `gst` command: one entry point, one module per subcommand.

Each subcommand lives in `gst_ros/cli/<name>.py` and defines

    HELP: str                                  # one line for `gst --help`
    def add_arguments(parser): ...             # argparse arguments
    def run(args) -> int: ...                  # exit status

Modules are imported only when their subcommand runs, so `gst --help` stays fast and a
subcommand's heavy imports (torch, pybullet) cost nothing to the others.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module under gst_ros.cli
SUBCOMMANDS = {
    "pose": "pose",
    "view": "view",
    "propose": "propose",
    "reconstruct": "reconstruct",
    "convert-checkpoint": "convert_checkpoint",
    "export-onnx": "export_onnx",
    "render": "render",
    "demo": "demo",
}


def _available():
    """(name, module) for every subcommand whose module exists in this install."""
    out = []
    for name, mod in SUBCOMMANDS.items():
        try:
            spec = importlib.util.find_spec(f"gst_ros.cli.{mod}")
        except ImportError:
            spec = None
        if spec is not None:
            out.append((name, mod))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    available = _available()
    parser = argparse.ArgumentParser(
        prog="gst",
        description="gst_ros command-line tools (no ROS needed).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    for name, mod in available:
        if name == wanted:
            module = importlib.import_module(f"gst_ros.cli.{mod}")
            p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=f"(run `gst {name} --help`)")
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""``hf-layerif <command> [options]``: dispatches to one ``HfArgumentParser`` per command."""

from __future__ import annotations

import sys

COMMANDS = {
    "demo": ("hf_layerif.cli.demo", "the whole pipeline offline on the embedded demo model (or --model and data)"),
    "score": ("hf_layerif.cli.score", "per-block LayerIF influence scores of a model for a task"),
    "allocate": ("hf_layerif.cli.allocate", "experts or sparsity per block from scores, or a baseline"),
    "prune": ("hf_layerif.cli.prune", "prune with per-block sparsity (magnitude, wanda, sparsegpt) and evaluate"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: hf-layerif <command> [options]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<10} {help_text}")
        print("\n`hf-layerif <command> --help` lists a command's options.")
        return 0
    if argv[0] in ("-V", "--version"):
        from ..version import __version__

        print(__version__)
        return 0
    command = argv.pop(0)
    if command not in COMMANDS:
        print(f"hf-layerif: unknown command {command!r}; choose one of {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    import importlib
    import os

    module = importlib.import_module(COMMANDS[command][0])
    try:
        return int(module.run(argv) or 0)
    except (FileNotFoundError, ValueError) as err:  # bad input: one line that names the fix, not a traceback
        if os.environ.get("HF_LAYERIF_DEBUG"):
            raise
        print(f"hf-layerif {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

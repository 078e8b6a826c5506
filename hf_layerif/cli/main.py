"""``hf-layerif <command> [options]``: dispatches to one ``HfArgumentParser`` per command."""

from __future__ import annotations

import sys

COMMANDS = {
    "demo": ("hf_layerif.cli.demo", "the whole pipeline offline on the embedded demo model (or --model and data)"),
    "score": ("hf_layerif.cli.score", "per-block LayerIF influence scores of a model for a task"),
    "allocate": ("hf_layerif.cli.allocate", "experts or sparsity per block from scores, or a baseline"),
    "prune": ("hf_layerif.cli.prune", "prune with per-block sparsity (magnitude, wanda, sparsegpt) and evaluate"),
}


# what an interrupted command keeps, under its output folder (option, default, what is there)
RESUMABLE = {
    "score": ("--output", "layerif-scores", "the influence checkpoint (finished passes and adapter draws) in {}"),
    "prune": ("--output", "layerif-pruned", "the finished allocation-selection stages in {}/.selection"),
}


def interrupted_message(command: str, argv: list[str]) -> str:
    """One line after Ctrl-C: what was kept, and the exact command that resumes."""
    import shlex

    again = "hf-layerif " + shlex.join([command, *argv])
    if command not in RESUMABLE:
        return f"hf-layerif {command}: interrupted; nothing was kept. Run it again: {again}"
    option, default, kept = RESUMABLE[command]
    folder = next((a.split("=", 1)[1] for a in argv if a.startswith(option + "=")), None)
    if folder is None and option in argv and argv.index(option) + 1 < len(argv):
        folder = argv[argv.index(option) + 1]
    return (f"hf-layerif {command}: interrupted. Kept: {kept.format(folder or default)}. "
            f"The same command resumes from it: {again}")


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
        return int(module.run(list(argv)) or 0)
    except KeyboardInterrupt:
        print(interrupted_message(command, argv), file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as err:  # bad input: one line that names the fix, not a traceback
        if os.environ.get("HF_LAYERIF_DEBUG"):
            raise
        print(f"hf-layerif {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

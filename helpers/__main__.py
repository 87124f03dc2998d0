"""Command line: `python -m helpers COMMAND ...` (also under `accelerate launch` / `torchrun`).

The commands live in helpers.cli (setup in helpers.setup); this file only dispatches.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "finetune": ("helpers.cli", "finetune_main", "fine-tune an encoder for sentiment"),
    "predict": ("helpers.cli", "predict_main", "label the reviews of a JSON Lines file"),
    "pretrain": ("helpers.cli", "pretrain_main", "MLM (+NSP) pretraining of a mini BERT"),
    "bench": ("helpers.cli", "bench_main", "training throughput, TFLOP/s and MFU"),
    "setup": ("helpers.setup", "setup_main", "fetch and convert the offline assets"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m helpers COMMAND [options]\n\ncommands:")
        for name, (_, _, text) in COMMANDS.items():
            print(f"  {name:<9} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    from helpers.config import read_environment

    read_environment()
    module, function, _ = COMMANDS[argv[0]]
    return getattr(importlib.import_module(module), function)(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())

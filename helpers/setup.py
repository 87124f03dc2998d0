"""`python -m helpers setup`: fetch and convert the offline assets once, after installing.

Data first (helpers.data.prepare: the VADER review snippets, a few seconds with PyPI
reachable), then the models (helpers.models.prepare, where that module provides it).
Rerunning is quick: each step checks what is already in the cache and stops there.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time


def setup_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers setup",
        description="Fetch and convert the offline data and models into the cache folder.")
    parser.add_argument("--data-only", action="store_true", help="skip the models")
    args = parser.parse_args(argv)

    steps = [("data", "helpers.data")] + ([] if args.data_only else [("models", "helpers.models")])
    for name, module_name in steps:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            print(f"{name}: {module_name} does not exist yet, skipped")
            continue
        if not hasattr(module, "prepare"):
            print(f"{name}: {module_name} has nothing to prepare, skipped")
            continue
        start = time.perf_counter()
        try:
            module.prepare()
        except (ValueError, RuntimeError, OSError) as error:  # their messages say what to run
            print(f"setup failed ({name}): {error}", file=sys.stderr)
            return 1
        print(f"{name}: ready ({time.perf_counter() - start:.1f} s)")
    return 0

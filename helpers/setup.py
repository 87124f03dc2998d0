"""`python -m helpers setup`: fetch and convert the offline assets once, after installing.

Data first (helpers.data.prepare: the VADER review snippets, a few seconds with PyPI
reachable), then the models (helpers.models.prepare: the converted multilingual-e5-small).
Rerunning is quick: each step checks what is already in the cache and stops there.
"""
from __future__ import annotations

import argparse
import sys
import time


def setup_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers setup",
        description="Fetch and convert the offline data and models into the cache folder.")
    parser.add_argument("--data-only", action="store_true", help="skip the models")
    args = parser.parse_args(argv)

    from helpers import data, models

    steps = [("data", data)] + ([] if args.data_only else [("models", models)])
    for name, module in steps:
        start = time.perf_counter()
        try:
            module.prepare()
        except (ValueError, RuntimeError, OSError) as error:  # their messages say what to run
            print(f"setup failed ({name}): {error}", file=sys.stderr)
            return 1
        print(f"{name}: ready ({time.perf_counter() - start:.1f} s)")
    return 0

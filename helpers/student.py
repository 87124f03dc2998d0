"""The student edition: `python -m helpers.student` (what `make student` calls).

Writes build/student/, a copy of every notebook with the code of each exercise solution
(cells tagged `solution`) replaced by a stub that raises NotImplementedError. The exercise
text and the `check` cells stay, so a student's answer is still tested by the same asserts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import read_environment
from .runtime import ROOT, build_dir

STUB = ("# Exercise: write your solution here, then run the check cell below.\n"
        "raise NotImplementedError(\"exercise not solved yet\")")


def is_solution(cell) -> bool:
    return "solution" in cell.get("metadata", {}).get("tags", [])


def student_copy(nb):
    """A copy of `nb` with solution code replaced by the stub, shown rather than hidden."""
    import copy

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if is_solution(cell):
            cell.source = STUB
            cell.metadata.get("jupyter", {}).pop("source_hidden", None)
            cell.metadata["tags"] = [t for t in cell.metadata["tags"] if t != "solution"] + ["answer"]
    return nb


def write_student_edition(out_dir: Path | None = None) -> list[Path]:
    import nbformat

    out_dir = Path(out_dir) if out_dir else build_dir() / "student"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        target = out_dir / path.name
        nbformat.write(student_copy(nbformat.read(path, as_version=4)), target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.student", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=None, help="folder (default: build/student)")
    args = parser.parse_args(argv)
    read_environment()
    written = write_student_edition(args.output)
    print(f"wrote {len(written)} student notebooks to {written[0].parent if written else args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

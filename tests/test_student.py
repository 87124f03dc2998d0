"""The student edition keeps exercises and checks, removes every solution, and still runs.

`make test` executes the student copy of notebook 00; `make student` sets
STUDENT_CHECK_ALL=1 and executes every student notebook up to its first exercise.
"""
import os
from pathlib import Path

import nbformat
import pytest

from helpers import course, student
from helpers.config import get_profile

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECK_ALL = os.environ.get("STUDENT_CHECK_ALL") == "1"


def _solution_only_lines(nb) -> set[str]:
    """Lines that appear in solution cells and nowhere else in the notebook."""
    solution, elsewhere = set(), set()
    for cell in nb.cells:
        lines = {l.strip() for l in cell.source.splitlines() if len(l.strip()) >= 8 and not l.strip().startswith("#")}
        (solution if student.is_solution(cell) else elsewhere).update(lines)
    return solution - elsewhere


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_solution_text_survives(path):
    nb = nbformat.read(path, as_version=4)
    copy = student.student_copy(nb)
    lines = {l.strip() for c in copy.cells for l in c.source.splitlines()}
    leaked = sorted(_solution_only_lines(nb) & lines)
    assert not leaked, f"{path.name}: solution lines in the student copy: {leaked[:3]}"
    assert sum(student.is_solution(c) for c in copy.cells) == 0
    assert sum(c.source == student.STUB for c in copy.cells) == sum(student.is_solution(c) for c in nb.cells)
    checks = lambda n: [c.source for c in n.cells if "check" in c.metadata.get("tags", [])]  # noqa: E731
    assert checks(copy) == checks(nb), "check cells must stay as they are"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if CHECK_ALL or p.name.startswith("00_")],
                         ids=lambda p: p.stem)
def test_student_copy_runs_up_to_its_first_exercise(path, tmp_path):
    copy = student.student_copy(nbformat.read(path, as_version=4))
    stubs = [i for i, c in enumerate(copy.cells) if c.source == student.STUB]
    if not stubs:
        pytest.skip(f"{path.name} has no exercise with a solution")
    copy.cells = copy.cells[: stubs[0] + 1]  # everything before the first exercise, and its stub
    nbformat.write(copy, tmp_path / path.name)
    info = course.run_notebook(tmp_path / path.name, tmp_path / "out",
                               timeout=get_profile().cell_timeout_s)
    assert info["status"] == "failed" and info["failed_cell"] == stubs[0], info
    assert "NotImplementedError" in info["error"]

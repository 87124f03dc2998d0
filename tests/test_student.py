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


def _names(source: str, ctx) -> set[str]:
    """Names a cell binds (ctx=ast.Store, with defs and imports) or reads (ctx=ast.Load)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics: not used in these notebooks' exercises
        return set()
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}
    if ctx is ast.Store:
        names |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        names |= {(a.asname or a.name).split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    return names


def solution_only_names_used_later(nb) -> list[str]:
    """Lesson cells that read a name only an earlier solution cell defines (a stub breaks them)."""
    import ast

    defined, from_solutions, found = set(), set(), []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        if student.is_solution(cell):
            from_solutions |= _names(cell.source, ast.Store) - defined
            continue
        if "check" not in tags:
            missing = (_names(cell.source, ast.Load) & from_solutions) - _names(cell.source, ast.Store)
            found += [f"cell {i} reads {name!r}" for name in sorted(missing)]
        defined |= _names(cell.source, ast.Store)
        from_solutions -= defined
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lessons_go_on_past_an_unsolved_exercise(path):
    found = solution_only_names_used_later(nbformat.read(path, as_version=4))
    assert not found, f"{path.name}: a lesson cell needs a name that only a solution defines: {found}"


def test_catches_a_lesson_that_needs_a_solution():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("data = [1, 2, 3]"),
        nbformat.v4.new_code_cell("def mean(xs):\n    return sum(xs) / len(xs)", metadata={"tags": ["solution"]}),
        nbformat.v4.new_code_cell("assert mean([2]) == 2", metadata={"tags": ["check"]}),
        nbformat.v4.new_code_cell("print(mean(data))")])
    assert solution_only_names_used_later(nb) == ["cell 3 reads 'mean'"]
    nb.cells.insert(3, nbformat.v4.new_code_cell("from statistics import mean"))
    assert solution_only_names_used_later(nb) == []

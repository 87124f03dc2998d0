"""The course runner executes notebooks, measures them, and names the cell that fails."""
import json

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers import course, report, runtime
from helpers.config import record
from helpers.runtime import SETTINGS


def _notebook(tmp_path, name, *sources):
    nb = new_notebook(cells=[new_markdown_cell("# demo")] + [new_code_cell(s) for s in sources])
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def test_run_records_time_memory_and_outputs(tmp_path):
    path = _notebook(tmp_path, "98_ok.ipynb", "x = [0] * 1000", "print(len(x))")
    info = course.run_notebook(path, tmp_path / "out", timeout=60)
    assert info["status"] == "ok" and info["wall_s"] > 0 and info["peak_mb"] > 10
    executed = nbformat.read(tmp_path / "out" / "98_ok.ipynb", as_version=4)
    assert executed.cells[2].outputs[0]["text"] == "1000\n"
    assert len(executed.cells) == 3  # the memory probe is not left in the notebook


def test_failure_names_the_cell_and_keeps_the_partial_copy(tmp_path):
    path = _notebook(tmp_path, "97_bad.ipynb", "print('before')", "1 / 0", "print('never')")
    info = course.run_notebook(path, tmp_path / "out", timeout=60)
    assert info["status"] == "failed"
    assert info["failed_cell"] == 2 and info["cell_source"] == "1 / 0"
    assert "ZeroDivisionError" in info["error"]
    partial = nbformat.read(tmp_path / "out" / "97_bad.ipynb", as_version=4)
    assert partial.cells[1].outputs[0]["text"] == "before\n"
    assert partial.cells[3].outputs == []


def test_report_shows_recorded_results_and_run_times(tmp_path, monkeypatch):
    monkeypatch.setattr(SETTINGS, "build", tmp_path)
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    # run_times.json lives in the real build/ (it outlives COURSE_BUILD_DIR); keep the test out of it
    times = tmp_path / "run_times.json"
    monkeypatch.setattr(runtime, "run_times_path", lambda: times)
    monkeypatch.setattr(course, "run_times_path", lambda: times)
    record("96_demo", "smoke", accuracy=0.875, matrix={"books": {"hotel": 0.5}})
    course._save_run("96_demo", {"status": "ok", "wall_s": 1.5, "peak_mb": 100.0}, "smoke")
    page = report.write_report().read_text()
    assert "96_demo" in page and "0.875" in page and "matrix.books.hotel" in page and "1.5" in page
    assert json.loads((tmp_path / "results.json").read_text())["notebooks"]["96_demo"]["run"]["status"] == "ok"


def test_a_cell_that_never_answers_is_stopped_and_named(tmp_path):
    """A hung kernel holds a class for the profile's cell_timeout_s (minutes), not an hour."""
    import time

    from helpers.config import PROFILES

    assert all(p.cell_timeout_s < 3600 for p in PROFILES.values())
    path = _notebook(tmp_path, "95_hang.ipynb", "print('before')", "import time\ntime.sleep(600)",
                     "print('never')")
    start = time.perf_counter()
    info = course.run_notebook(path, tmp_path / "out", timeout=3)
    assert time.perf_counter() - start < 60
    assert info["status"] == "timed out" and info["failed_cell"] == 2
    assert info["cell_source"] == "import time" and "within 3 s" in info["error"]

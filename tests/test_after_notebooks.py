"""Checks on what the notebooks of this very `make test` session recorded. conftest.py runs
them after notebooks 03-07, in the same process (also under pytest-xdist)."""
import pytest

from helpers import report


@pytest.mark.after_notebooks
def test_every_headline_is_recorded_by_a_smoke_run_of_the_notebooks(request):
    """The report reads results.json by key; a notebook that renames or stops recording a key
    would leave its row "not recorded" without anyone noticing. `make test` runs this after the
    notebooks (conftest.py orders it), on what they recorded in this very session."""
    if not getattr(request.config, "course_notebooks_collected", False):
        pytest.skip("reads what the notebooks record: run it with them (make test)")
    from helpers.runtime import load_results

    results = load_results()
    started = request.config.course_session_start
    stale = sorted({nb for _, _, nb, _ in report.HEADLINES
                    if results.get("notebooks", {}).get(nb, {}).get("recorded_at", "") < started})
    assert stale == [], f"not recorded in this session: {stale}"
    missing = [f"{nb}: {'.'.join(path)}" for _, _, nb, path in report.HEADLINES
               if report.lookup(results, nb, path) is None]
    assert missing == []

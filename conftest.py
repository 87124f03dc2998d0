"""Checks on every notebook cell that `make test` executes (nbval, smoke profile).

Here, at the repository root, so that it applies to the notebooks/ items as well as to tests/.
A cell passes nbval when it runs without an error; this also fails it when its output carries library
noise a learner should not have to read (helpers.quiet.NOISE_PATTERNS: transformers' load report and
weight progress bars, matplotlib's missing-glyph warnings), naming the lines.
"""
import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    outputs = getattr(item, "test_outputs", None)  # what nbval's cell item received from the kernel
    if call.when != "call" or not report.passed or outputs is None:
        return
    from helpers.quiet import noise_in

    noise = noise_in(outputs)
    if noise:
        report.outcome = "failed"
        report.longrepr = ("library noise in the cell's output (see helpers/quiet.py):\n"
                           + "\n".join(f"  [{name}] {line}" for name, line in noise[:20]))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "after_notebooks: run after the notebooks of the same session (make test)")


def pytest_collection_modifyitems(session, config, items):
    """Tests marked after_notebooks read what the notebooks wrote: they go last, and they know
    whether the notebooks ran in this session at all."""
    import time

    last = [item for item in items if item.get_closest_marker("after_notebooks")]
    items[:] = [item for item in items if item not in last] + last
    config.course_notebooks_collected = any(str(item.fspath).endswith(".ipynb") for item in items)
    config.course_session_start = time.strftime("%Y-%m-%d %H:%M:%S")

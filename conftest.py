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
    from helpers.config import read_environment

    read_environment()  # a test run is an edge too: make test's COURSE_BUILD_DIR applies to tests
    config.addinivalue_line(
        "markers", "after_notebooks: run after the notebooks of the same session (make test)")


# Notebooks 03 to 07 read what the ones before them saved (checkpoints, fine-tuned models), and
# tests/test_after_notebooks.py reads what they recorded: under pytest-xdist (make test) they run
# in this order in one worker, while the other workers take the rest file by file (a notebook's
# cells share one kernel; a test file's fixtures are made once).
CHAIN = ("notebooks/03_", "notebooks/04_", "notebooks/05_", "notebooks/06_", "notebooks/07_",
         "tests/test_after_notebooks.py")


def _scope(nodeid: str) -> str:
    return "chain" if nodeid.startswith(CHAIN) else nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, there only when it is
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class CourseScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return _scope(nodeid)

    return CourseScheduling(config, log)


def pytest_collection_modifyitems(session, config, items):
    """The chain first (it is the longest), tests marked after_notebooks last: they read what the
    notebooks wrote, and they know whether the notebooks ran in this session."""
    import time

    items.sort(key=lambda item: (bool(item.get_closest_marker("after_notebooks")),
                                 _scope(item.nodeid) != "chain"))
    config.course_notebooks_collected = any(str(item.fspath).endswith(".ipynb") for item in items)
    config.course_session_start = time.strftime("%Y-%m-%d %H:%M:%S")

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

"""Notebooks run in a real browser: JupyterLab, headless Chromium, Run All, widgets and plots render.

nbval proves the kernels run the cells; it cannot see what a learner sees. This test opens
notebooks in JupyterLab (from .venv, on localhost, smoke profile) with Debian's Chromium driven
by playwright-core (tests/browser/run_notebook.js), runs all cells, and checks that the interactive
widget rendered and answers, that plots rendered, and that neither the page nor a cell reported an
error. Screenshots go to build/screenshots/.

It also checks that Chinese text in the outputs is drawn with a font that has Chinese glyphs, not
as missing-glyph boxes: for each output cell with Chinese characters the page reports the fonts
Chromium rendered it with (DevTools' CSS.getPlatformFontsForNode) and compares each character's
width with that of a character no font has; a screenshot of those cells is saved.

It is slow and installs a browser, so it runs only with BROWSER_CHECK=1 (`make browser-check`).
Then it installs what is missing: `apt-get install -y chromium fonts-noto-cjk` (as root) and
playwright-core into tests/browser/node_modules (git-ignored). It skips, saying why, when that is
impossible.
"""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"
SCREENSHOTS = ROOT / "build" / "screenshots"
ENABLED = os.environ.get("BROWSER_CHECK") == "1"

pytestmark = pytest.mark.skipif(not ENABLED, reason="browser check is opt-in: BROWSER_CHECK=1 (make browser-check)")

# Each notebook, the widget it must show, one interaction that must reach the kernel and back, and how
# many output cells with Chinese text it shows at least (01: the printed e5 tokens; 04: the two Chinese
# example reviews in the table).
CASES = {
    "01_attention_math": {
        "widgets": ["widget-dropdown", "widget-slider"],
        "interaction": {"kind": "slider", "label": "head"},
        "chinese_cells": 1,
    },
    "04_finetuning": {
        "widgets": ["widget-text"],
        "interaction": {"kind": "text", "value": "The battery died after two days and support never answered.",
                        "expect": "P(positive)"},
        "chinese_cells": 2,
    },
}
CJK_CHARS = "[\\u3400-\\u4dbf\\u4e00-\\u9fff]"  # a JavaScript character class: the glyphs to check

# Console errors that say nothing about the course, each with the reason it is harmless. Keep
# this list short: every entry hides a class of messages. (None has been needed: JupyterLab 4.6.6,
# ipywidgets 8.1.9 and Chromium 156 log no console error on notebooks 01 and 04.)
BENIGN_CONSOLE = [
]


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _chinese_families() -> set[str]:
    """Font families fontconfig (and so Chromium) has that cover Chinese."""
    if not shutil.which("fc-list"):
        return set()
    listed = _run(["fc-list", ":lang=zh", "family"]).stdout
    return {name.strip() for line in listed.splitlines() for name in line.split(",") if name.strip()}


def _chromium() -> str:
    """Debian's chromium, and a font with Chinese glyphs for it (fonts-noto-cjk), installed with apt-get
    when missing (root only)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = ([] if found else ["chromium"]) + ([] if _chinese_families() else ["fonts-noto-cjk"])
    if not missing:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"cannot install {' '.join(missing)} (needs root and apt-get): apt-get install -y {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        done = _run(cmd, env=env, timeout=1200)
        if done.returncode != 0:
            pytest.skip(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-300:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but it is not on PATH")
    if not _chinese_families():
        pytest.skip("apt-get installed fonts-noto-cjk but fontconfig lists no font for Chinese")
    return found


def _node() -> str:
    """node, with playwright-core (pinned in tests/browser/package.json) installed next to the runner."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed to drive the browser (Debian: apt-get install -y nodejs npm)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").exists():
        done = _run([npm, "install", "--no-audit", "--no-fund", "--no-package-lock"], cwd=BROWSER_DIR, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"npm install playwright-core failed: {done.stderr.strip()[-300:]}")
    return node


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tools():
    return {"chromium": _chromium(), "node": _node()}


@contextlib.contextmanager
def _jupyterlab(root_dir: Path, home: Path):
    """JupyterLab from .venv on localhost serving root_dir, kernels in the smoke profile;
    yields {"base", "token", "log"}."""
    jupyter = Path(sys.executable).parent / "jupyter"
    assert jupyter.exists(), f"no jupyter next to {sys.executable}"
    # A fresh configuration, at JupyterLab's defaults but for two settings: no news or update checks
    # (they would go to the internet and put a notification over the screenshots), and no autosave
    # (the executed notebook must never be written back; root_dir is a copy anyway).
    settings = home / "cfg" / "lab" / "user-settings" / "@jupyterlab"
    for plugin, values in {"apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
                           "docmanager-extension/plugin": {"autosave": False}}.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), "course-browser-check"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "cfg"), "JUPYTER_RUNTIME_DIR": str(home / "rt"),
           "JUPYTER_DATA_DIR": str(home / "data"), "IPYTHONDIR": str(home / "ipython"),
           "PATH": f"{jupyter.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "COURSE_PROFILE": "smoke", "COURSE_BUILD_DIR": "build/smoke"}
    log_path = home / "jupyterlab.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
             "--ServerApp.open_browser=False", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             # window.jupyterapp, so the runner can issue Run All Cells and read the notebook model
             "--LabApp.expose_app_in_browser=True"]
            + (["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
            stdout=log, stderr=subprocess.STDOUT, cwd=home, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5):
                        break
                except OSError:
                    assert server.poll() is None, log_path.read_text()[-2000:]
                    assert time.monotonic() < deadline, "JupyterLab did not answer within 120 s"
                    time.sleep(0.5)
            yield {"base": base, "token": token, "log": log_path}
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture(scope="module")
def lab(tools, tmp_path_factory):
    """JupyterLab on a snapshot of notebooks/: the browser runs the notebooks as they are now, and
    nothing it does (saving, checkpoints, a dialog answered wrongly) can touch the repository's
    files. The notebooks find data and write build output through helpers.config, which resolves
    paths from the repository root, not from the kernel's working directory."""
    root = tmp_path_factory.mktemp("notebooks")
    for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        shutil.copy(path, root / path.name)
    with _jupyterlab(root, tmp_path_factory.mktemp("lab")) as server:
        yield server


def _drive(tools, lab, notebook: str, interaction: dict | None, screenshot: Path, tmp_path,
           render_wait_s: int = 60, glyph_chars: str = CJK_CHARS) -> dict:
    report_path = tmp_path / "report.json"
    options = {"base": lab["base"], "token": lab["token"], "notebook": notebook, "chromium": tools["chromium"],
               "screenshot": str(screenshot), "report": str(report_path), "timeout_s": 900,
               "render_wait_s": render_wait_s, "interaction": interaction, "glyph_chars": glyph_chars}
    done = subprocess.run([tools["node"], str(BROWSER_DIR / "run_notebook.js"), json.dumps(options)],
                          capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert report_path.exists(), f"the browser runner wrote no report:\n{done.stderr[-3000:]}"
    report = json.loads(report_path.read_text())
    print(json.dumps(report, indent=1, ensure_ascii=False)[:6000])  # shown with -s or on failure
    return report


def _glyph_problems(cells: list[dict], families: set[str]) -> list[str]:
    """What is wrong with how the checked output cells were drawn: characters as wide as the missing-glyph
    box, or fewer glyphs from fonts that cover Chinese than the cell has characters to check."""
    problems = []
    for cell in cells:
        text = cell["text"][:40]
        if cell["box_like"]:
            problems.append(f"{text!r}: {cell['box_like']!r} are as wide as the missing-glyph box")
        from_chinese_fonts = sum(f["glyphCount"] for f in cell["fonts"] if f["familyName"] in families)
        if from_chinese_fonts < cell["checked_chars"]:
            used = ", ".join(f"{f['familyName']} ({f['glyphCount']} glyphs)" for f in cell["fonts"]) or "none"
            problems.append(f"{text!r}: {cell['checked_chars']} characters to draw, {from_chinese_fonts} glyphs "
                            f"from a font that covers Chinese; fonts used: {used}")
    return problems


def _unexplained(errors: list[dict]) -> list[dict]:
    return [e for e in errors if not any(pattern in e["text"] for pattern, _reason in BENIGN_CONSOLE)]


@pytest.mark.parametrize("notebook", sorted(CASES))
def test_notebook_runs_and_renders_in_a_browser(notebook, tools, lab, tmp_path):
    if not (ROOT / "notebooks" / f"{notebook}.ipynb").exists():
        pytest.fail(f"notebooks/{notebook}.ipynb does not exist")
    case = CASES[notebook]
    report = _drive(tools, lab, f"{notebook}.ipynb", case["interaction"], SCREENSHOTS / f"{notebook}.png", tmp_path)
    assert "fatal" not in report, f"the browser could not run {notebook}: {report.get('fatal')}"
    page = report["page"]

    # every cell ran, and none raised (in the notebook model and in what is on screen)
    assert report["run_all_ok"] and not page["not_executed"], \
        f"Run All stopped; code cells not executed: {page['not_executed']}; errors: {page['model_errors']}"
    assert not page["model_errors"], page["model_errors"]
    assert not page["stderr_tracebacks"], page["stderr_tracebacks"][0]

    # plots: output images that the browser decoded
    assert page["images"] > 0 and page["images_decoded"] == page["images"], \
        f"{page['images_decoded']} of {page['images']} output images decoded"

    # widgets: each widget output has a rendered view, with the controls this notebook is about
    assert page["widget_outputs_in_model"] > 0, "no widget output at all"
    assert page["widget_outputs_rendered"] >= page["widget_outputs_in_model"], \
        f"{page['widget_outputs_rendered']} of {page['widget_outputs_in_model']} widget outputs rendered"
    for control in case["widgets"]:
        assert page["widgets"][control] > 0, f"no .{control} in the page: {page['widgets']}"
    assert page["error_displaying_widget"] == 0, "'Error displaying widget' is on the page"
    assert page["widget_error_views"] == 0, f"{page['widget_error_views']} widget(s) failed to load (error view)"
    assert page["loading_widget_placeholders"] == 0, "a widget is still 'Loading widget...'"

    # the widget talks to the kernel: an interaction changes what it shows
    assert report["interaction"]["ok"], f"widget interaction failed: {report['interaction']}"

    # the browser saw no JavaScript errors
    assert not report["page_errors"], report["page_errors"][:3]
    unexplained = _unexplained(report["console_errors"])
    assert not unexplained, f"console errors: {unexplained[:5]}"

    shot = SCREENSHOTS / f"{notebook}.png"
    assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot at {shot}"

    # Chinese text is drawn with a font that has its glyphs
    cells = report["glyphs"]["cells"]
    assert len(cells) >= case["chinese_cells"], f"{len(cells)} output cells with Chinese text: {cells}"
    assert not _glyph_problems(cells, _chinese_families()), _glyph_problems(cells, _chinese_families())
    chinese_shot = SCREENSHOTS / f"{notebook}_chinese.png"
    assert chinese_shot.exists() and chinese_shot.stat().st_size > 10_000, f"no screenshot at {chinese_shot}"


# A notebook that goes wrong in every way the check looks for: a widget whose front-end module does
# not exist, a view of a widget that was never created, a script that throws in the page, a cell
# that raises, and a
# cell after it that Run All must not reach.
NEGATIVE_CONTROL = [
    "import ipywidgets as widgets\nfrom traitlets import Unicode\n\n\n"
    "class Missing(widgets.DOMWidget):\n"
    "    _model_module = _view_module = Unicode('no-such-widget-module').tag(sync=True)\n"
    "    _model_name = Unicode('NoModel').tag(sync=True)\n"
    "    _view_name = Unicode('NoView').tag(sync=True)\n\n\n"
    "Missing()",
    "from IPython.display import HTML\n"
    "HTML(\"<script>setTimeout(() => { throw new Error('browser check negative control'); })</script>\")",
    # a widget view whose model the kernel never created
    "display({'application/vnd.jupyter.widget-view+json': {'model_id': 'f' * 32, 'version_major': 2,"
    " 'version_minor': 0}}, raw=True)",
    # characters no font has, in a table cell as pandas shows reviews: drawn as missing-glyph boxes
    "from IPython.display import HTML\nHTML('<table><tr><td>\\ue000\\ue001\\ue002 \\U0010fffd</td></tr></table>')",
    "raise RuntimeError('browser check negative control')",
    "print('not reached')",
]


def test_the_check_sees_what_goes_wrong(tools, tmp_path):
    """The detectors above fire: on a broken notebook, every one of them reports the failure."""
    import nbformat

    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in NEGATIVE_CONTROL])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, root / "negative_control.ipynb")
    with _jupyterlab(root, tmp_path / "home") as server:
        report = _drive(tools, server, "negative_control.ipynb", None, tmp_path / "shots" / "negative_control.png",
                        tmp_path, render_wait_s=10,  # one view can never render: do not wait long for it
                        glyph_chars="[\\ue000-\\uf8ff\\u{100000}-\\u{10ffff}]")  # private use: in no font
    assert "fatal" not in report, report.get("fatal")
    page = report["page"]
    assert report["run_all_ok"] is False and page["not_executed"] == [5], (report["run_all_ok"], page["not_executed"])
    [cell] = report["glyphs"]["cells"]
    assert cell["checked_chars"] == 4 and len(cell["box_like"]) == 4, cell
    assert len(_glyph_problems([cell], _chinese_families())) == 2, cell
    assert [e["ename"] for e in page["model_errors"]] == ["RuntimeError"]
    assert page["stderr_tracebacks"] and "browser check negative control" in page["stderr_tracebacks"][0]
    assert page["widget_outputs_rendered"] < page["widget_outputs_in_model"] == 2, page
    assert page["widget_error_views"] == 1 and page["error_displaying_widget"] == 1, page
    assert any("negative control" in e for e in report["page_errors"]), report["page_errors"]
    assert _unexplained(report["console_errors"]), "the missing widget module left no console error"
    assert page["images"] == 0

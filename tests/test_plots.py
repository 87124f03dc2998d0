import warnings

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from helpers import plots  # noqa: E402
from helpers.runtime import SETTINGS

CHINESE = "中文评论"


def test_plot_label_keeps_latin_text_and_never_draws_boxes():
    assert plots.plot_label("great", 3) == "great"
    assert plots.plot_label("▁battery", 0) == "▁battery"
    expected = "中文" if plots.chinese_font() else "zh5"
    assert plots.plot_label("中文", 5) == expected


def test_save_figure_writes_under_the_build_dir(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setattr(SETTINGS, "build", tmp_path)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = plots.save_figure(fig, "demo")
    plt.close(fig)
    assert path == str(tmp_path / "figures" / "demo.png") and (tmp_path / "figures" / "demo.png").stat().st_size > 0


def _render(text: str, family=None) -> np.ndarray:
    """`text` as the notebooks' figures draw it (the current font settings, or `family` alone)."""
    fig = plt.figure(figsize=(1.2, 0.8), dpi=100)
    fig.text(0.1, 0.25, text, fontsize=32, **({"family": family} if family else {}))
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].mean(axis=-1)
    plt.close(fig)
    return pixels


def _missing_glyph_font() -> str:
    """matplotlib's Last Resort font: what it draws a character in when no other font has it (a box
    with the character's Unicode block inside, the same box for every character of the block)."""
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist if "last resort" in f.name.lower()}
    assert len(names) == 1, f"matplotlib's missing-glyph font not found: {names}"
    return names.pop()


def _drawn_as_box(text: str, family=None) -> list[bool]:
    """For each character of `text`: is it drawn exactly as when no font has it?"""
    box_font = _missing_glyph_font()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matplotlib warns about each missing glyph; the pixels tell
        return [np.array_equal(_render(ch, family), _render(ch, box_font)) for ch in text]


@pytest.fixture
def notebook_fonts():
    """The font settings a notebook has after start_notebook, undone afterwards."""
    with plt.rc_context():
        sns.set_theme(context="notebook", style="whitegrid")
        yield plots.chinese_font()


def test_chinese_in_figures_is_drawn_with_glyphs_not_boxes(notebook_fonts):
    assert notebook_fonts, ("no font with Chinese glyphs: `pip install -r requirements.txt` installs "
                            "noto-cjk-sans-otc, or install one for the system (Debian: fonts-noto-cjk)")
    assert _drawn_as_box(CHINESE) == [False] * len(CHINESE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font(s)" would fail here
        images = [_render(ch) for ch in CHINESE]
    assert all((image < 128).sum() > 50 for image in images), "a character left no ink"
    assert len({image.tobytes() for image in images}) == len(CHINESE), "different characters, identical pictures"
    assert _drawn_as_box("Ab") == [False, False]  # Latin text keeps its font


def test_the_glyph_check_sees_boxes_in_a_latin_only_font(notebook_fonts):
    """The negative control: DejaVu Sans alone (matplotlib's own font) has no Chinese glyphs."""
    assert _drawn_as_box(CHINESE, family="DejaVu Sans") == [True] * len(CHINESE)
    assert _drawn_as_box("Ab", family="DejaVu Sans") == [False, False]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = {_render(ch, "DejaVu Sans").tobytes() for ch in CHINESE}
    assert len(images) == 1, "four missing characters of one block should draw the same box"


def test_the_course_font_is_the_pinned_file(notebook_fonts, monkeypatch):
    """Without a system font, the one found is the pinned package's, checked against its sha256."""
    from helpers.data import recorded_checksums, sha256_of

    monkeypatch.setattr(plots, "_system_faces", lambda: [])
    plots._find_chinese_font.cache_clear()
    try:
        found = plots._find_chinese_font()
    finally:
        plots._find_chinese_font.cache_clear()
    assert found, f"{plots.FONT_PACKAGE} is not installed: pip install -r requirements.txt"
    family, path = found
    assert family == "Noto Sans CJK SC"
    assert sha256_of(path) == recorded_checksums()[f"{plots.FONT_PACKAGE}/{plots.FONT_FILE}"]

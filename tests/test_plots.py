import matplotlib

matplotlib.use("Agg")

from helpers import plots  # noqa: E402


def test_plot_label_keeps_latin_text_and_never_draws_boxes():
    assert plots.plot_label("great", 3) == "great"
    assert plots.plot_label("▁battery", 0) == "▁battery"
    expected = "中文" if plots.chinese_font() else "zh5"
    assert plots.plot_label("中文", 5) == expected


def test_save_figure_writes_under_the_build_dir(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setenv("COURSE_BUILD_DIR", str(tmp_path))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = plots.save_figure(fig, "demo")
    plt.close(fig)
    assert path == str(tmp_path / "figures" / "demo.png") and (tmp_path / "figures" / "demo.png").stat().st_size > 0

"""The seaborn figures the notebooks share, in one consistent style.

Each function draws on a given matplotlib Axes (or a new one) and returns the Axes, so a
notebook can combine them; `save_figure` keeps a copy under build/figures/ for the course report.
"""
from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .runtime import build_dir

CMAP = "viridis"


def _axes(ax, size=(4.5, 3.8)):
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    return ax


def save_figure(fig, name: str) -> str:
    """Save `fig` as build/figures/<name>.png (the course report shows these)."""
    path = build_dir() / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return str(path)


def confusion_matrix(matrix, labels=("negative", "positive"), ax=None, title=None, normalize=True):
    """Rows: true label; columns: predicted. Shares per row when normalize, with counts shown."""
    matrix = np.asarray(matrix, dtype=float)
    shown = matrix / matrix.sum(axis=1, keepdims=True).clip(min=1) if normalize else matrix
    ax = _axes(ax, (3.6, 3.0))
    annot = np.array([[f"{s:.0%}\n({int(c)})" if normalize else f"{int(c)}" for s, c in zip(rs, rc)]
                      for rs, rc in zip(shown, matrix)])
    sns.heatmap(shown, annot=annot, fmt="", cmap="Blues", vmin=0, vmax=1 if normalize else None,
                xticklabels=labels, yticklabels=labels, cbar=False, ax=ax)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    return ax


def transfer_matrix(frame, ax=None, title=None, vmin=0.5, vmax=1.0, fmt=".2f"):
    """A train-on-rows, test-on-columns accuracy matrix; the in-domain diagonal is outlined."""
    ax = _axes(ax, (4.8, 4.0))
    sns.heatmap(frame, annot=True, fmt=fmt, cmap=CMAP, vmin=vmin, vmax=vmax, ax=ax,
                cbar_kws={"label": "accuracy"})
    for i in range(min(frame.shape)):
        if frame.index[i] == frame.columns[i]:
            ax.add_patch(plt.Rectangle((i, i), 1, 1, fill=False, edgecolor="white", lw=2.5))
    ax.set(xlabel="tested on", ylabel="trained on", title=title or "transfer matrix")
    return ax


def learning_curves(history, x="step", metrics=("train_loss",), hue=None, ax=None, title=None):
    """Lines of one or more history columns (a DataFrame from helpers.training) against `x`."""
    ax = _axes(ax, (5.5, 3.5))
    long = history.melt(id_vars=[c for c in (x, hue) if c], value_vars=list(metrics),
                        var_name="metric", value_name="value").dropna(subset=["value"])
    sns.lineplot(long, x=x, y="value", hue=hue or "metric", style="metric" if hue else None,
                 marker="o" if len(long) < 60 else None, ax=ax)
    ax.set(title=title or ", ".join(metrics), ylabel="")
    return ax


def reliability_diagram(table, ax=None, title=None, label=None):
    """Accuracy against confidence per bin (from helpers.metrics.reliability_table); the
    diagonal is perfect calibration."""
    ax = _axes(ax, (4.0, 4.0))
    shown = table.dropna()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.plot(shown["confidence"], shown["accuracy"], marker="o", label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
           title=title or "reliability diagram")
    if label:
        ax.legend()
    return ax


def attention_heatmap(weights, tokens_q, tokens_k=None, ax=None, title=None, cbar=False):
    """One head's attention weights (seq_q, seq_k) with token labels on both axes."""
    weights = np.asarray(weights, dtype=float)
    tokens_k = tokens_q if tokens_k is None else tokens_k
    ax = _axes(ax, (0.35 * len(tokens_k) + 1.5, 0.35 * len(tokens_q) + 1.0))
    sns.heatmap(weights, xticklabels=tokens_k, yticklabels=tokens_q, cmap=CMAP, vmin=0,
                vmax=max(float(weights.max()), 1e-9), square=True, cbar=cbar, ax=ax)
    ax.tick_params(axis="x", labelrotation=90, labelsize=8)
    ax.tick_params(axis="y", labelrotation=0, labelsize=8)
    ax.set(title=title or "", xlabel="attends to (key)", ylabel="query")
    return ax


# --- Chinese text in figures -------------------------------------------------------------------

CJK_SAMPLE = "中文评论"  # a font must have all of these to count as covering Chinese
# Noto Sans CJK (SIL Open Font License 1.1), pinned in requirements.txt: the font the course brings
# for machines that have none (CI, lab images, fresh containers); its sha256 is in data/checksums.json.
FONT_PACKAGE, FONT_FILE = "noto_cjk_sans_otc", "NotoSansCJK-Regular.ttc"


def _has_cjk(text: str) -> bool:
    return any("\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef" for ch in text)


def _covers_chinese(path: str, index: int = 0):
    """The face if the font file's face `index` has glyphs for CJK_SAMPLE, else None."""
    from matplotlib.ft2font import FT2Font

    try:
        font = FT2Font(path, face_index=index)
    except (OSError, RuntimeError, ValueError):
        return None
    # matplotlib ships "Last Resort", whose every glyph is the same box
    if "last resort" in font.family_name.lower() or not all(font.get_char_index(ord(c)) for c in CJK_SAMPLE):
        return None
    return font


def _system_faces() -> list[tuple[str, int]]:
    """(file, face index) of the fonts this machine offers for Chinese, best first."""
    from matplotlib import font_manager

    faces = []
    if shutil.which("fc-match"):
        # fontconfig's own pick for Simplified Chinese sans text comes first; fc-list adds the rest
        for cmd in (["fc-match", "-f", "%{file}|%{index}\n", "sans-serif:lang=zh-cn"],
                    ["fc-list", "-f", "%{file}|%{index}\n", ":lang=zh"]):
            listed = subprocess.run(cmd, capture_output=True, text=True).stdout
            faces += [(path, int(index or 0)) for path, _, index in
                      (line.partition("|") for line in listed.splitlines() if line.strip())]
    faces += [(font.fname, font.index) for font in font_manager.fontManager.ttflist]
    return faces


def _course_font_faces() -> list[tuple[str, int]]:
    """The faces of the course's pinned font file (after its sha256 check), Simplified Chinese first;
    [] when the package is not installed."""
    from matplotlib.ft2font import FT2Font

    from .data import ChecksumError, DataError, _package_file

    try:
        path = str(_package_file(FONT_PACKAGE, FONT_FILE))
    except ChecksumError:
        raise  # a different file than the one the course was checked with: say so, do not guess
    except DataError:
        return []
    names = [FT2Font(path, face_index=i).family_name for i in range(FT2Font(path).num_faces)]
    # the collection starts with the Japanese face, whose forms of shared characters are not China's
    order = sorted(range(len(names)), key=lambda i: ("mono" in names[i].lower(), not names[i].endswith(" SC")))
    return [(path, i) for i in order]


@lru_cache(maxsize=None)
def _find_chinese_font() -> tuple[str, str] | None:
    """(family name, file) of the first font that covers Chinese: the system's, else the course's."""
    from matplotlib import font_manager

    for faces in (_system_faces, _course_font_faces):  # the course's file is hashed only when needed
        for path, index in faces():
            font = _covers_chinese(path, index)
            if font is not None:
                font_manager.fontManager.addfont(path)  # every face of a collection, so the family resolves
                return font.family_name, path
    return None


def chinese_font() -> str | None:
    """The family name of a font with Chinese glyphs, registered with matplotlib and added to the
    font families as a fallback (Latin text keeps its usual font, Chinese characters take this one);
    None when there is none (then see `plot_label`). Call it again after a style reset (seaborn's
    set_theme resets the families); `start_notebook` calls it."""
    found = _find_chinese_font()
    if found is None:
        return None
    family = found[0]
    families = plt.rcParams["font.family"]
    if family not in families:
        plt.rcParams["font.family"] = [*families, family]
    return family


def plot_label(text: str, position: int) -> str:
    """`text` as a tick label: unchanged, unless it holds Chinese characters and no installed font can
    draw them; then "zh<position>" (an empty box would hide which token it is)."""
    return f"zh{position}" if _has_cjk(text) and chinese_font() is None else text

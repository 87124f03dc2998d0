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

from .config import build_dir

CMAP = "viridis"
DIVERGING = "vlag"


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

def _has_cjk(text: str) -> bool:
    return any("\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef" for ch in text)


@lru_cache(maxsize=None)
def chinese_font() -> str | None:
    """The family name of an installed font with Chinese glyphs, registered with matplotlib and put
    first in its sans-serif list; None when the machine has none (then see `plot_label`)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    # fontconfig knows fonts that matplotlib's cache may have missed; then matplotlib's own list
    paths = []
    if shutil.which("fc-list"):
        listed = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True).stdout
        paths += [line.split(":")[0].strip() for line in listed.splitlines() if line.strip()]
    paths += [font.fname for font in font_manager.fontManager.ttflist]
    for path in paths:
        try:
            font = FT2Font(path)
        except (OSError, RuntimeError, ValueError):
            continue
        # matplotlib ships "Last Resort", which draws every character as the same box
        if font.get_char_index(ord("中")) and "last resort" not in font.family_name.lower():
            font_manager.fontManager.addfont(path)
            plt.rcParams["font.sans-serif"] = [font.family_name, *plt.rcParams["font.sans-serif"]]
            return font.family_name
    return None


def plot_label(text: str, position: int) -> str:
    """`text` as a tick label: unchanged, unless it holds Chinese characters and no installed font can
    draw them; then "zh<position>" (an empty box would hide which token it is)."""
    return f"zh{position}" if _has_cjk(text) and chinese_font() is None else text

"""The one-page course report: build/index.html, written at the end of `make course`.

It opens with the course at a glance (a few key numbers per stage: pretraining, in-domain,
cross-domain, cross-lingual, evaluation and calibration), then holds every number each notebook
recorded with `helpers.runtime.record`, the key figures notebooks saved under build/figures/, and
each notebook's run time and peak memory. Nothing in it is typed: it is read from
build/results.json.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .runtime import build_dir, load_results


def _flatten(prefix: str, value, out: list) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out.append((prefix, value))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 12:
        return html.escape(json.dumps(value[:12]))[:-1] + ", …]"
    return html.escape(json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value)


# The course at a glance: (stage, what, notebook, where in that notebook's results). A number a
# notebook has not recorded (it has not run yet, or recorded under another name) is shown as
# "not recorded", never as an error.
HEADLINES = [
    ("pretraining", "mini BERT, held-out MLM accuracy (MLM + NSP)", "03_pretraining_mlm_nsp",
     ("val_mlm_accuracy",)),
    ("pretraining", "unigram baseline for that accuracy (always the most frequent token)",
     "03_pretraining_mlm_nsp", ("unigram_baseline",)),
    ("pretraining", "mini BERT, held-out NSP accuracy (chance 0.5)", "03_pretraining_mlm_nsp",
     ("val_nsp_accuracy",)),
    ("in-domain", "multilingual-e5-small, English test accuracy", "04_finetuning",
     ("test_accuracy", "multilingual-e5-small")),
    ("in-domain", "minilm-en, English test accuracy", "04_finetuning", ("test_accuracy", "minilm-en")),
    ("in-domain", "mini BERT pretrained with MLM + NSP, English test accuracy", "04_finetuning",
     ("test_accuracy", "mini BERT, MLM+NSP")),
    ("in-domain", "mini BERT from random weights, English test accuracy", "04_finetuning",
     ("test_accuracy", "mini BERT, random init")),
    ("in-domain", "what pretraining buys minilm-en (minus its random twin)", "04_finetuning",
     ("pretraining_gain", "minilm-en_minus_random", "gain")),
    ("in-domain", "what pretraining buys multilingual-e5-small (minus its random twin)",
     "04_finetuning", ("pretraining_gain", "multilingual-e5-small_minus_random", "gain")),
    ("in-domain", "what pretraining buys mini BERT (MLM + NSP minus random)", "04_finetuning",
     ("pretraining_gain", "mlm_nsp_minus_random")),
    ("pretraining", "linear probe of the mini BERT after its budget (random weights: next row)",
     "03_pretraining_mlm_nsp", ("probe_final",)),
    ("pretraining", "linear probe of random weights", "03_pretraining_mlm_nsp", ("probe_random",)),
    ("cross-domain", "mean accuracy drop, e5 probe trained on another course domain, English",
     "05_cross_domain", ("transfer_drop_mean", "en")),
    ("cross-domain", "mean accuracy drop, e5 probe trained on another course domain, Chinese",
     "05_cross_domain", ("transfer_drop_mean", "zh")),
    ("cross-domain", "e5 probe trained on authored English reviews, on real English electronics "
     "reviews", "05_cross_domain", ("authored_vs_wild", "wild en electronics")),
    ("cross-domain", "the same probe on real English movie-review snippets", "05_cross_domain",
     ("authored_vs_wild", "wild en movies")),
    ("cross-domain", "DAPT of the mini BERT on the real-world target (change, over seeds)",
     "05_cross_domain", ("dapt", "change_target")),
    ("cross-lingual", "e5 trained on English, Chinese test split (zero-shot)", "06_cross_lingual",
     ("zero_shot_en_to_zh",)),
    ("cross-lingual", "e5 trained on Chinese, Chinese test split", "06_cross_lingual", ("zh_to_zh",)),
    ("cross-lingual", "few-shot: mean accuracy by number k of Chinese training reviews",
     "06_cross_lingual", ("few_shot",)),
    ("cross-lingual", "e5 trained on English, real Chinese reviews", "06_cross_lingual", ("wild_zh",)),
    ("evaluation", "e5-en (notebook 04), course English test", "07_evaluation",
     ("accuracy", "e5-en", "course en")),
    ("evaluation", "e5-en, real English reviews", "07_evaluation", ("accuracy", "e5-en", "wild en")),
    ("evaluation", "e5-en, course Chinese test (zero-shot)", "07_evaluation",
     ("accuracy", "e5-en", "course zh")),
    ("evaluation", "e5-en, real Chinese reviews (zero-shot)", "07_evaluation",
     ("accuracy", "e5-en", "wild zh")),
    ("evaluation", "e5-en minus minilm-en on the same test reviews (paired)", "07_evaluation",
     ("paired_test", "e5-en vs minilm-en", "all")),
    ("evaluation", "best model by validation accuracy", "07_evaluation", ("best_model",)),
    ("calibration", "e5-en expected calibration error, raw probabilities", "07_evaluation",
     ("calibration", "e5-en", "ece_before")),
    ("calibration", "e5-en expected calibration error after temperature scaling", "07_evaluation",
     ("calibration", "e5-en", "ece_after")),
    ("calibration", "e5-en temperature T (fitted on the validation split)", "07_evaluation",
     ("calibration", "e5-en", "temperature")),
]


def lookup(results: dict, notebook: str, path) -> object | None:
    """results.json's value at `path` inside `notebook`'s results, or None when it is missing."""
    value = results.get("notebooks", {}).get(notebook, {}).get("results", {})
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def headline_value(value) -> str:
    """One readable cell for the shapes notebooks record: an accuracy with its interval, a mean
    over seeds, a paired difference with its p-value, a curve {k: {"mean": ...}}, or a number."""
    if isinstance(value, (bool, str)) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    if isinstance(value, dict):
        if {"accuracy", "low", "high"} <= value.keys():
            n = f" (n={value['n']})" if "n" in value else ""
            return f"{value['accuracy']:.3f} [{value['low']:.3f}, {value['high']:.3f}]{n}"
        if {"difference", "low", "high"} <= value.keys():
            # below 0.001 the exact value says more about the resamples and approximations than
            # about the models
            tests = [f"{name} p " + ("< 0.001" if value[key] < 0.001 else f"= {value[key]:.3g}")
                     for name, key in
                     (("McNemar", "p_mcnemar"), ("paired bootstrap", "p_paired_bootstrap"))
                     if isinstance(value.get(key), (int, float))]
            return (f"{value['difference']:+.3f} [{value['low']:+.3f}, {value['high']:+.3f}]"
                    + (f"; {', '.join(tests)}" if tests else ""))
        if "mean" in value:
            seeds = value.get("seeds") or value.get("runs")
            text = f"{value['mean']:.3f}"
            if isinstance(value.get("std"), (int, float)) and seeds and seeds > 1:
                text += f" ± {value['std']:.3f} over {seeds} seeds"
            ci = value.get("ci95_first_seed")
            if isinstance(ci, list) and len(ci) == 2:
                text += f", 95% CI [{ci[0]:.3f}, {ci[1]:.3f}] (first seed)"
            return text
        if value and all(isinstance(v, dict) and "mean" in v for v in value.values()):
            return " · ".join(f"k={k}: {v['mean']:.3f}" for k, v in value.items())
    return json.dumps(value, ensure_ascii=False)[:120]


def headline_rows(results: dict) -> list[dict]:
    """HEADLINES filled in from `results` (the content of results.json); value None = not recorded."""
    notebooks = results.get("notebooks", {})
    rows = []
    for stage, what, notebook, path in HEADLINES:
        value = lookup(results, notebook, path)
        rows.append({"stage": stage, "what": what, "notebook": notebook,
                     "profile": notebooks.get(notebook, {}).get("profile"),
                     "value": None if value is None else headline_value(value)})
    return rows


def _headline_table(results: dict) -> list[str]:
    parts = ["<h2>The course at a glance</h2>",
             "<p>Key numbers of each stage; intervals are 95% bootstrap intervals over the test "
             "reviews. Every notebook's full results follow below.</p>",
             "<table><tr><th>stage</th><th>result</th><th>value</th><th>notebook (profile)</th></tr>"]
    for row in headline_rows(results):
        value = html.escape(row["value"]) if row["value"] is not None else "<em>not recorded</em>"
        source = html.escape(row["notebook"]) + (f" ({html.escape(row['profile'])})" if row["profile"] else "")
        parts.append(f"<tr><td>{html.escape(row['stage'])}</td><td>{html.escape(row['what'])}</td>"
                     f"<td>{value}</td><td>{source}</td></tr>")
    parts.append("</table>")
    return parts


def write_report(path: Path | None = None) -> Path:
    results = load_results()
    notebooks = results.get("notebooks", {})
    parts = ["<!doctype html><meta charset='utf-8'><title>BERT transfer learning: course report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "img{max-width:520px;margin:6px}</style>",
             "<h1>Course report</h1>"]
    parts += _headline_table(results)
    parts.append("<h2>Run time and peak memory</h2><table><tr><th>notebook</th><th>profile</th>"
                 "<th>status</th><th>wall s</th><th>peak MB</th></tr>")
    for name, entry in sorted(notebooks.items()):
        run = entry.get("run", {})
        parts.append(f"<tr><td>{html.escape(name)}</td><td>{run.get('profile', '')}</td>"
                     f"<td>{run.get('status', '')}</td><td>{run.get('wall_s', '')}</td>"
                     f"<td>{run.get('peak_mb', '')}</td></tr>")
    parts.append("</table><h2>Every recorded result, per notebook</h2>")
    for name, entry in sorted(notebooks.items()):
        rows: list = []
        _flatten("", entry.get("results", {}), rows)
        if not rows:
            continue
        parts.append(f"<h3>{html.escape(name)} ({entry.get('profile', '?')} profile)</h3><table>")
        parts += [f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows]
        parts.append("</table>")
    figures = sorted((build_dir() / "figures").glob("*.png"))
    if figures:
        parts.append("<h2>Key figures</h2>")
        for fig in figures:
            data = base64.b64encode(fig.read_bytes()).decode()
            parts.append(f"<figure style='display:inline-block'><img src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(fig.stem)}</figcaption></figure>")
    target = Path(path) if path else build_dir() / "index.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(parts), encoding="utf-8")
    return target

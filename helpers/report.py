"""The one-page course report: build/index.html, written at the end of `make course`.

It holds the headline numbers every notebook recorded with `helpers.config.record`, the key
figures notebooks saved under build/figures/, and each notebook's run time and peak memory.
Nothing in it is typed: it is read from build/results.json.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .config import build_dir, load_results


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


def write_report(path: Path | None = None) -> Path:
    results = load_results()
    notebooks = results.get("notebooks", {})
    parts = ["<!doctype html><meta charset='utf-8'><title>BERT transfer learning: course report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "img{max-width:520px;margin:6px}</style>",
             "<h1>Course report</h1>"]
    parts.append("<h2>Run time and peak memory</h2><table><tr><th>notebook</th><th>profile</th>"
                 "<th>status</th><th>wall s</th><th>peak MB</th></tr>")
    for name, entry in sorted(notebooks.items()):
        run = entry.get("run", {})
        parts.append(f"<tr><td>{html.escape(name)}</td><td>{run.get('profile', '')}</td>"
                     f"<td>{run.get('status', '')}</td><td>{run.get('wall_s', '')}</td>"
                     f"<td>{run.get('peak_mb', '')}</td></tr>")
    parts.append("</table><h2>Headline results</h2>")
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

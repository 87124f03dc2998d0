"""Lessons without library noise: transformers' load report and progress bars, and a scanner for them.

`from_pretrained(auto, source, ...)` loads a model as `auto.from_pretrained` does, but instead of
transformers' load report (a table of UNEXPECTED and MISSING keys with notes) it prints one line
saying what the checkpoint had that the model drops and what the model starts afresh, or nothing
when the two match. `save_pretrained(obj, path)` saves without the "Writing model shards" bar.
The course's own progress bars (tqdm.auto in helpers and notebooks) are not touched.

`noise_in(outputs)` finds the library messages a learner should never have to read in a
notebook's outputs; `make test` runs it on every notebook cell it executes (the root conftest.py).
"""
from __future__ import annotations

import logging
import re
import sys
from contextlib import contextmanager

# What an executed lesson must not show: each pattern with what prints it.
NOISE_PATTERNS = {
    "transformers load report": re.compile(r"LOAD REPORT|\bUNEXPECTED\b|\bMISSING\b.*newly initialized|"
                                           r"can be ignored when loading from different task"),
    "transformers weights bar": re.compile(r"Writing model shards|Loading weights"),
    # matplotlib draws a box for a character its font lacks and warns once per character
    "missing glyph": re.compile(r"Glyph \d+ .*missing from (current )?font"),
}

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colours, which the load report uses
_printed: set[str] = set()  # one-line load summaries already shown in this process


def noise_in(outputs) -> list[tuple[str, str]]:
    """(pattern name, offending line) for each noise line in a cell's outputs (nbformat dicts:
    streams, display data and results; their text/plain and stream text are read)."""
    found = []
    for output in outputs:
        texts = [output.get("text", "")]
        data = output.get("data") or {}
        texts.append(data.get("text/plain", ""))
        for text in texts:
            text = _ANSI.sub("", "".join(text) if isinstance(text, list) else text)
            for line in re.split(r"[\r\n]+", text):
                for name, pattern in NOISE_PATTERNS.items():
                    if pattern.search(line):
                        found.append((name, line.strip()[:200]))
    return found


class _HoldLoadReport(logging.Filter):
    """Keeps transformers' load report off the log; the records are kept in case loading fails
    (transformers then raises "look at the above report")."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record):
        if "LOAD REPORT" in str(record.msg):
            self.held.append(record)
            return False
        return True


@contextmanager
def transformers_quiet():
    """Within the block: no transformers progress bars (loading weights, writing shards) and no load
    report. Everything else transformers logs still shows, and the previous settings come back."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    bars_on, hub_bars_off = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    hold = _HoldLoadReport()
    # the report is logged by the loader's own logger; a filter there leaves other messages alone
    loader_log = hf_logging.get_logger("transformers.modeling_utils")
    loader_log.addFilter(hold)
    hf_logging.disable_progress_bar()
    try:
        yield hold
    except Exception:
        for record in hold.held:  # the details a failed load refers to
            print(record.getMessage(), file=sys.stderr)
        raise
    finally:
        loader_log.removeFilter(hold)
        if bars_on:
            hf_logging.enable_progress_bar()  # this also turns huggingface_hub's bars back on ...
        if hub_bars_off:
            hub_utils.disable_progress_bars()  # ... unless they were off before


def _groups(keys, others, min_depth=1) -> list[str]:
    """`keys` as module paths: each shortened to its topmost module (at least `min_depth` names deep)
    that holds none of `others`, so the NSP head reads cls.seq_relationship, not its weight and bias."""
    groups = set()
    for key in keys:
        parts = key.split(".")
        for depth in range(min(min_depth, len(parts) - 1) or 1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if not any(k == prefix or k.startswith(prefix + ".") for k in others):
                groups.add(prefix)
                break
    return sorted(g for g in groups if not any(g.startswith(o + ".") for o in groups))


def load_summary(model, source, info: dict) -> str | None:
    """One line on how a checkpoint met the model class, or None when every weight matched."""
    dropped, new = set(info.get("unexpected_keys", ())), set(info.get("missing_keys", ()))
    new |= {key for key, *_shapes in info.get("mismatched_keys", ())}
    if not dropped and not new:
        return None
    params = dict(model.named_parameters())
    kept = [name for name in params if name not in new]
    cls = type(model).__name__
    line = (f"{source} -> {cls}: kept {', '.join(_groups(kept, new))} "
            f"({sum(params[k].numel() for k in kept) / 1e6:.2f}M weights)")
    if dropped:
        # "cls.predictions" says which head went; its parent "cls" alone would not
        line += f"; dropped (not part of {cls}): {', '.join(_groups(dropped, params, min_depth=2))}"
    if new:
        line += f"; new, randomly initialised: {', '.join(_groups(new, kept, min_depth=2))}"
    return line


def from_pretrained(auto, source, **kwargs):
    """`auto.from_pretrained(source, **kwargs)` (auto: an Auto* or model class) with one line of its
    own instead of transformers' load report and progress bar; a line is printed once per process."""
    with transformers_quiet():
        model, info = auto.from_pretrained(source, output_loading_info=True, **kwargs)
    line = load_summary(model, source, info)
    if line and line not in _printed:
        _printed.add(line)
        print(line)
    return model


def save_pretrained(obj, path, **kwargs):
    """`obj.save_pretrained(path)` without transformers' "Writing model shards" bar."""
    with transformers_quiet():
        return obj.save_pretrained(path, **kwargs)

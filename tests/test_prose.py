"""The notebooks' prose speaks to a learner.

Two rules, checked on every markdown cell of notebooks/:

* no acceptance targets or bookkeeping of this project ("goal ... NOT met", "the course aims
  for ..."): a lesson says what the numbers show, not whether an issue was closed;
* no measured figure typed into prose: a decimal number or a percentage outside math (`$...$`)
  and outside code spans drifts from what the code prints, so the code must print it. A short
  allow-list keeps the textbook constants (BERT's 15% and 80/10/10, a 95% interval, 512
  positions, library versions) that are definitions, not measurements.
"""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

# Project wording, not lesson wording.
BOOKKEEPING = re.compile(
    r"\bgoals?\b|\bnot met\b|\b(?:is|are|was|were|be|been) met\b|\bacceptance\b|"
    r"\bissue #?\d+|\bthe course aims\b|\baims? for\b|\btargets? (?:of|for) (?:this|the) course\b",
    re.IGNORECASE)
# A decimal figure (0.913, 3.47) or a percentage (91%, 91.3 %).
FIGURE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?\s?%|\d+\.\d+)(?![\w.]*\d)")
# Definitions, not measurements.
ALLOWED_PERCENT = {"15", "80", "10", "50", "95", "100", "2.5", "97.5"}
ALLOWED_DECIMAL = {"2.5", "97.5"}  # the percentiles of a 95% interval
# Version numbers ("transformers 4.50") are names, not measurements.
VERSION = re.compile(r"(?:transformers|torch|python|datasets|accelerate|version|v)\s*$", re.IGNORECASE)
MATH_OR_CODE = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$|```.*?```|`[^`\n]*`|<[^>\n]+>|\]\([^)\n]*\)",
                          re.DOTALL)


def prose(source: str) -> str:
    """The text a learner reads as prose: math, code, HTML tags and link targets removed."""
    return MATH_OR_CODE.sub(" ", source)


def problems(source: str) -> list[str]:
    text = prose(source)
    found = [f"project wording {m.group(0)!r}" for m in BOOKKEEPING.finditer(text)]
    for m in FIGURE.finditer(text):
        figure = m.group(1)
        if figure.endswith("%") and figure.rstrip("% ") in ALLOWED_PERCENT or figure in ALLOWED_DECIMAL:
            continue
        if VERSION.search(text[max(0, m.start() - 20):m.start()]):
            continue
        context = text[max(0, m.start() - 30):m.end() + 10].replace("\n", " ")
        found.append(f"typed figure {figure!r} in '...{context}...'")
    return found


def notebook_problems(nb: dict) -> list[str]:
    return [f"markdown cell {i}: {p}" for i, cell in enumerate(nb["cells"])
            if cell["cell_type"] == "markdown" for p in problems("".join(cell["source"]))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_prose_has_no_targets_and_no_typed_figures(path):
    found = notebook_problems(json.loads(path.read_text(encoding="utf-8")))
    assert not found, (f"{path.name}: print figures from code (or put them in math), and speak "
                       "to the learner, not to this project's issues:\n  " + "\n  ".join(found))


def _notebook(*markdown: str) -> dict:
    return {"cells": [{"cell_type": "markdown", "source": text} for text in markdown]}


def test_catches_a_planted_target_and_a_typed_figure():
    found = notebook_problems(_notebook(
        "Fine-tuning e5 on all labels.\n\n**goal** ≥ 95% test accuracy: NOT met.",
        "The fine-tuned model reaches 0.913 on the Chinese test split."))
    assert any("'goal'" in p for p in found) and any("'NOT met'" in p for p in found)
    assert any("'0.913'" in p and p.startswith("markdown cell 1") for p in found)
    assert not any("95%" in p for p in found)  # a definition, not a measurement


def test_allows_math_code_definitions_and_versions():
    assert problems("Mask 15% of the tokens: 80/10/10, up to 512 positions, a 95% interval.") == []
    assert problems("The loss is $\\ln 32 \\approx 3.47$; print it with `f'{acc:.3f}'`.") == []
    assert problems("`transformers.AdamW` was removed in transformers 4.50.") == []
    assert problems("```python\nacc = 0.913\n```") == []
    assert problems("the model scores 91.3% here") == ["typed figure '91.3%' in '...the model "
                                                       "scores 91.3% here...'"]
    assert problems("chance is 37 %") != []


# Each method the course teaches, with a piece of its equation that display math must contain.
EQUATIONS = {
    "01_": {"scaled dot-product attention": r"\sqrt{d_k}", "multi-head with W^O": "W^O",
            "sinusoidal positions": "10000^{2i/d}", "token + segment + position embeddings": r"W^\text{seg}"},
    "03_": {"MLM loss over masked positions": r"\sum_{i \in M}", "NSP head and loss": r"\mathcal{L}_{\text{NSP}}"},
    "04_": {"softmax cross-entropy": r"-\log p_y", "AdamW, decoupled decay": r"\lambda\,\theta_{t-1}",
            "linear warm-up and decay": "t / W", "InfoNCE": r"/\tau"},
    "05_": {"paired bootstrap interval": "Uniform", "PAD": r"1 - 2\,\varepsilon"},
    "06_": {"bootstrap interval": "q_{2.5}", "cosine similarity": r"\cos(u, v)"},
    "07_": {"bootstrap interval": "q_{2.5}", "F1": "F_{1,k}", "McNemar": r"\chi^2", "ECE": r"\mathrm{ECE}",
            "temperature scaling": "z / T"},
    "08_": {"FLOPs per token": "6N", "MFU": r"\text{MFU}"},
}


@pytest.mark.parametrize("prefix", sorted(EQUATIONS))
def test_every_method_has_its_equation(prefix):
    path = next(p for p in NOTEBOOKS if p.name.startswith(prefix))
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    math = " ".join(m.group(1) for c in cells if c["cell_type"] == "markdown"
                    for m in re.finditer(r"\$\$(.*?)\$\$", "".join(c["source"]), re.DOTALL))
    missing = [method for method, piece in EQUATIONS[prefix].items() if piece not in math]
    assert not missing, f"{path.name}: no display equation for {missing}"

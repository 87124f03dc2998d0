"""Fine-tuning an encoder for text classification, prediction, and saving the result.

`finetune` runs the course's one training loop (helpers.loop) with what classification needs:
tokenise once, dynamic padding, batches grouped by length, accuracy and macro-F1 on a
validation set each epoch. `predict` and `evaluate` run the one inference path
(helpers.inference); `save_finetuned` / `load_finetuned` keep a model with its labels, head,
text prefix and the precision it was trained in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from helpers.inference import batched_forward, collator, encode
from helpers.io import read_json, write_json
from helpers.loop import (TrainResult, length_grouped_batches, padding_fraction,  # noqa: F401
                          random_batches, train_loop, uses_bf16)
from helpers.metrics import classification_summary

MODEL_INFO = "course_model.json"  # written next to a saved fine-tuned model, last

# The head of LP-FT: a logistic regression with this C on standardised features (for e5 on the
# English validation split, 0.01 and 0.1 tie and 1.0 is worse).
PROBE_C = 0.1
# How the course fine-tunes an encoder, beyond the profile's sizes. For e5, LP-FT with the lower
# layers frozen keeps the features that carry a classifier to Chinese (notebook 06 compares it with
# full fine-tuning and with frozen features).
RECIPES = {"multilingual-e5-small": {"probe_init": True, "frozen_layers": 9}}


def recipe_for(name: str, profile) -> dict:
    """`finetune` keyword arguments the course uses for an encoder name: the mini BERT's own rate
    and epochs, e5's feature-preserving LP-FT, nothing (the profile's recipe) otherwise."""
    if name == "mini-bert":
        return profile.mini_bert_finetuning()
    return dict(RECIPES.get(name, {}))


def freeze_lower_layers(model: torch.nn.Module, layers: int) -> int:
    """Stop training the embeddings and the first `layers` transformer layers of a BERT-style
    encoder; returns how many parameters that froze. The frozen layers keep the features
    pretraining gave them (and their backward pass is skipped)."""
    encoder = getattr(model, "base_model", model)
    blocks = list(encoder.encoder.layer)
    if not 0 <= layers <= len(blocks):
        raise ValueError(f"layers must be between 0 and {len(blocks)}, got {layers}")
    frozen = [*encoder.embeddings.parameters(), *(p for b in blocks[:layers] for p in b.parameters())]
    for param in frozen:
        param.requires_grad_(False)
    return sum(p.numel() for p in frozen)


# --- prediction ------------------------------------------------------------------------------

def _default_max_length(tokenizer, model) -> int:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", 512)
    return min(tokenizer.model_max_length, limit, 512)


def _probabilities(model, batch):
    return torch.softmax(model(**batch).logits.float(), dim=-1)


def predict(model, tokenizer, texts: Sequence[str], *, batch_size: int = 64,
            max_length: int | None = None, bf16: bool = False) -> np.ndarray:
    """Class probabilities, shape (len(texts), num_labels), in the order of `texts`.

    bf16: compute in bf16 autocast where the chip does so natively (about twice as fast on such a
    CPU); pass the precision the model was trained in (`load_finetuned` returns it)."""
    max_length = max_length or _default_max_length(tokenizer, model)
    features = encode(tokenizer, texts, max_length=max_length)
    probs = batched_forward(model, features, _probabilities, collate=collator(tokenizer),
                            batch_size=batch_size, bf16=bf16)
    return probs if len(features) else np.zeros((0, model.config.num_labels), dtype=np.float32)


def evaluate(model, tokenizer, dataset, *, batch_size: int = 64,
             max_length: int | None = None, bf16: bool = False) -> dict:
    """Accuracy and macro-F1 of `model` on a dataset with `text` and `label` columns."""
    probs = predict(model, tokenizer, dataset["text"], batch_size=batch_size,
                    max_length=max_length, bf16=bf16)
    summary = classification_summary(list(dataset["label"]), probs.argmax(axis=1))
    return {"accuracy": summary["accuracy"], "macro_f1": summary["macro_f1"]}


# --- fine-tuning -----------------------------------------------------------------------------

def _check_columns(ds, name):
    missing = {"text", "label"} - set(ds.column_names)
    if missing:
        raise ValueError(f"{name} needs columns text and label; missing {sorted(missing)}")


def _validation(tokenizer, eval_ds, *, max_length, batch_size, bf16):
    """The evaluation function of a fine-tuning run: accuracy and macro-F1 on `eval_ds`."""
    _check_columns(eval_ds, "eval_ds")
    held_out = encode(tokenizer, eval_ds["text"], max_length=max_length)
    gold = list(eval_ds["label"])

    def eval_fn(model):
        probs = batched_forward(model, held_out, _probabilities, collate=collator(tokenizer),
                                batch_size=max(batch_size, 64), bf16=bf16)
        summary = classification_summary(gold, probs.argmax(axis=1))
        return {"val_accuracy": summary["accuracy"], "val_macro_f1": summary["macro_f1"]}
    return eval_fn


def _probe_init(model, tokenizer, train_ds, max_length):
    from helpers.domains import mean_pooled_embeddings
    from helpers.heads import MeanPoolForSequenceClassification, probe_head

    if not isinstance(model, MeanPoolForSequenceClassification):
        raise ValueError("probe_init needs a mean-pooling head (load_encoder(..., pooling='mean'))")
    features = mean_pooled_embeddings(model, tokenizer, list(train_ds["text"]),
                                      max_length=max_length, normalize=False)
    probe_head(model, features, train_ds["label"], C=PROBE_C)


def finetune(model, tokenizer, train_ds, eval_ds=None, *, profile, seed: int = 0,
             output_dir: str | Path | None = None, resume: bool = False,
             epochs: int | None = None, batch_size: int | None = None,
             learning_rate: float | None = None, metric: str = "accuracy",
             patience: int | None = None, freeze_embeddings: bool | None = None,
             probe_init: bool = False, frozen_layers: int = 0, **loop_kwargs) -> TrainResult:
    """Fine-tune a sequence classifier on `train_ds` (a datasets.Dataset with text and label).

    Each epoch ends with accuracy and macro-F1 on `eval_ds` (history columns val_accuracy,
    val_macro_f1); `metric` picks the one that chooses the best weights and early stopping.
    Sizes come from `profile` unless given; word embeddings are frozen when it says so.
    probe_init: start the head as a linear probe of the frozen features (LP-FT, mean-pool heads
    only, see helpers.heads.probe_head). frozen_layers: also freeze the embeddings and this many
    lower layers. Other keyword arguments go to `helpers.loop.train_loop`.
    `result.info["padding"]` compares the padding of length-grouped and random batches.
    """
    batch_size = batch_size or profile.batch_size
    max_len = profile.max_seq_len
    _check_columns(train_ds, "train_ds")
    train = encode(tokenizer, train_ds["text"], train_ds["label"], max_length=max_len)
    lengths = [len(f["input_ids"]) for f in train]
    if probe_init:
        _probe_init(model, tokenizer, train_ds, max_len)
    if frozen_layers:
        freeze_lower_layers(model, frozen_layers)
    eval_fn = None if eval_ds is None else _validation(
        tokenizer, eval_ds, max_length=max_len, batch_size=batch_size, bf16=profile.bf16)
    result = train_loop(
        model, train, collator(tokenizer),
        batches=lambda epoch: length_grouped_batches(lengths, batch_size, seed=seed, epoch=epoch),
        eval_fn=eval_fn, metric=f"val_{metric}", patience=patience, profile=profile, seed=seed,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        freeze_embeddings=profile.freeze_embeddings if freeze_embeddings is None
        else freeze_embeddings,
        output_dir=output_dir, resume=resume, desc="fine-tuning", **loop_kwargs)
    result.info["bf16"] = uses_bf16(profile.bf16)
    result.info["padding"] = {
        "length_grouped": padding_fraction(
            length_grouped_batches(lengths, batch_size, seed=seed, epoch=0), lengths),
        "random": padding_fraction(
            random_batches(len(lengths), batch_size, seed=seed, epoch=0), lengths)}
    return result


# --- saving a fine-tuned model ---------------------------------------------------------------

def save_finetuned(model, tokenizer, path: str | Path, *, max_seq_len: int,
                   labels: Sequence[str] | None = None, prefix: str = "",
                   bf16: bool = False) -> Path:
    """Model and tokenizer (save_pretrained) plus labels, max_seq_len, the head's pooling, the
    text prefix the model was trained with (e5's "query: ") and whether it was trained in bf16,
    for `predict`. course_model.json is written last: a folder without it is not finished."""
    from helpers import quiet
    from helpers.heads import saved_pooling

    path = Path(path)
    n = model.config.num_labels
    labels = list(labels) if labels is not None else [model.config.id2label[i] for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} label names for a model with {n} outputs")
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    quiet.save_pretrained(model, path)
    tokenizer.save_pretrained(path)
    write_json(path / MODEL_INFO, {"labels": labels, "max_seq_len": max_seq_len, "prefix": prefix,
                                   "pooling": saved_pooling(model.config), "bf16": bool(bf16)})
    return path


def load_finetuned(path: str | Path):
    """(model, tokenizer, info) of a directory written by `save_finetuned`; the model comes back
    with the head it was trained with (helpers.heads), info with labels, max_seq_len, prefix
    and bf16."""
    from transformers import AutoConfig, AutoTokenizer

    from helpers import quiet
    from helpers.heads import head_class, saved_pooling

    path = Path(path)
    if not (path / MODEL_INFO).is_file():
        raise FileNotFoundError(f"{path} is not a fine-tuned model directory (no {MODEL_INFO}); "
                                "make one with `python -m helpers finetune --output DIR`")
    saved = read_json(path / MODEL_INFO)
    info = {"prefix": "", "bf16": False, **(saved if isinstance(saved, dict) else {})}
    labels = info.get("labels")
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)
            and isinstance(info.get("max_seq_len"), int) and info["max_seq_len"] > 0):
        raise ValueError(f"{path / MODEL_INFO} is damaged (it needs \"labels\" and "
                         "\"max_seq_len\"); fine-tune the model again")
    if not (path / "model.safetensors").is_file():
        raise ValueError(f"{path} has no model.safetensors; the course loads weights only from "
                         "safetensors files, never from pickled ones (pytorch_model.bin)")
    model = quiet.from_pretrained(head_class(saved_pooling(AutoConfig.from_pretrained(path))), path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer, info

"""Running a model without training it: one eval-mode context and one batched forward.

Prediction, sentence embeddings, pretraining evaluation and fill-mask all go through here, so
dropout is always off, no gradient is kept, the model's own mode comes back afterwards, and
bf16 is used only where it was asked for and the chip computes it natively.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import numpy as np
import torch

from helpers import runtime


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Dropout off and no gradients inside the block; the model's mode is restored after it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def encode(tokenizer, texts: Sequence[str], labels: Sequence[int] | None = None, *,
           max_length: int) -> list[dict]:
    """Tokenise once, truncated but not padded (padding happens per batch)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] is {type(texts[bad]).__name__}, expected a string")
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    if labels is not None:
        for item, label in zip(features, labels, strict=True):
            item["labels"] = int(label)
    return features


def collator(tokenizer):
    """Pads each batch to its longest member (multiples of 8 suit GPU tensor cores only)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(
        tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None)


def batched_forward(model, features: Sequence[dict], fn: Callable, *, collate: Callable,
                    batch_size: int = 64, bf16: bool = False, progress: bool = False,
                    desc: str = "batches") -> np.ndarray:
    """fn(model, batch) -> a tensor with one row per example, for every item of `features`,
    as one float32 array in the order of `features` (an empty array when there are none).

    Longest first, so that each batch holds similar lengths and padding costs little.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    order = np.argsort([-len(f["input_ids"]) for f in features], kind="stable")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=bool(bf16) and runtime.native_bf16(device))
    out = np.zeros((0,), dtype=np.float32)
    with eval_mode(model), autocast:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            idx = order[start:start + batch_size]
            batch = collate([{k: v for k, v in features[i].items() if k != "labels"} for i in idx])
            rows = fn(model, {k: v.to(device) for k, v in batch.items()}).float().cpu().numpy()
            if start == 0:
                out = np.zeros((len(features), *rows.shape[1:]), dtype=np.float32)
            out[idx] = rows
    return out

"""BERT's two pretraining tasks, and pretraining a mini BERT from scratch on them.

- Masked language modelling (MLM): `mask_tokens` picks 15% of the tokens; the model must
  recover them from both sides of the context.
- Next-sentence prediction (NSP): `make_nsp_pairs` builds sentence pairs, half of them
  consecutive (IsNext), half with a second sentence from another document (NotNext).

`PretrainingCollator` turns pairs into padded, masked batches; `pretrain` trains on them with
the course's one training loop (helpers.loop.train_loop: checkpoints, exact resume) and
evaluates MLM and NSP on held-out documents. `continue_pretraining` runs MLM on new texts
(domain-adaptive pretraining, notebook 05). `python -m helpers pretrain` is helpers.cli.pretrain_main.
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import torch

from helpers.data import LANGS
from helpers.inference import eval_mode
from helpers.io import write_json

IGNORE = -100  # the label that cross-entropy skips: positions the model is not asked about
MLM_PROBABILITY = 0.15
RESULTS_FILE = "pretraining.json"  # written next to a saved pretrained model
EVAL_BATCHES = 8  # held-out pairs = 8 batches: ~±1 point on MLM accuracy, cheap to repeat


# --- masked language modelling ----------------------------------------------------------------

def mask_tokens(input_ids: torch.Tensor, *, mask_token_id: int, vocab_size: int,
                special_token_ids: Sequence[int], mlm_probability: float = MLM_PROBABILITY,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) for masked language modelling; `input_ids` is left unchanged.

    Each position whose token is not in `special_token_ids` (include the padding id) is
    selected with probability `mlm_probability`. A selected token becomes [MASK] 80% of the
    time, a random non-special token 10%, and stays as it is 10%. `labels` holds the original
    token at selected positions and -100 (ignored by the loss) everywhere else.
    `generator` makes the draws repeatable; None uses torch's global random state.
    """
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be between 0 and 1, got {mlm_probability}")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id {mask_token_id} is outside the vocabulary "
                         f"0..{vocab_size - 1}")
    device = input_ids.device
    special = torch.tensor(sorted(set(int(i) for i in special_token_ids)), dtype=torch.long,
                           device=device)
    ordinary = torch.ones(vocab_size, dtype=torch.bool, device=device)
    ordinary[special[(special >= 0) & (special < vocab_size)]] = False
    ordinary_ids = ordinary.nonzero().squeeze(1)
    if len(ordinary_ids) == 0:
        raise ValueError("every token of the vocabulary is special: nothing to mask or sample")

    is_special = torch.isin(input_ids, special)
    chance = torch.full(input_ids.shape, mlm_probability, device=device)
    chance[is_special] = 0.0
    selected = torch.bernoulli(chance, generator=generator).bool()
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))

    # One uniform draw per position splits the selected ones 80 / 10 / 10.
    draw = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = selected & (draw < 0.8)
    to_random = selected & (draw >= 0.8) & (draw < 0.9)
    random_ids = ordinary_ids[torch.randint(len(ordinary_ids), input_ids.shape,
                                            generator=generator, device=device)]
    inputs = input_ids.clone()
    inputs[to_mask] = mask_token_id
    inputs[to_random] = random_ids[to_random].to(inputs.dtype)
    return inputs, labels


def masking_kinds(inputs: torch.Tensor, labels: torch.Tensor, mask_token_id: int) -> dict:
    """Boolean tensors saying how each selected position was corrupted: "mask" ([MASK]),
    "random" (another token) or "unchanged"; "selected" is their union.

    A random draw that happens to pick the original token counts as unchanged: the input the
    model sees is what matters.
    """
    selected = labels != IGNORE
    masked = selected & (inputs == mask_token_id)
    unchanged = selected & (inputs == labels)
    return {"selected": selected, "mask": masked, "random": selected & ~masked & ~unchanged,
            "unchanged": unchanged}


def render_masked(tokenizer, inputs: Sequence[int], labels: Sequence[int]) -> str:
    """One example as text: every selected position as ⟨what the model sees→the original⟩,
    padding left out, e.g. "[CLS] the ⟨[MASK]→cat⟩ sat ⟨under→on⟩ the ⟨mat→mat⟩ [SEP]"."""
    inputs, labels = [int(i) for i in inputs], [int(i) for i in labels]
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
    words = []
    for seen, gold in zip(inputs, labels):
        if seen == tokenizer.pad_token_id and gold == IGNORE:
            continue
        shown = tokenizer.convert_ids_to_tokens(seen)
        words.append(shown if gold == IGNORE
                     else f"⟨{shown}→{tokenizer.convert_ids_to_tokens(gold)}⟩")
    return " ".join(words)


def unigram_baseline(token_ids, labels: torch.Tensor,
                     special_token_ids: Sequence[int]) -> tuple[int, float]:
    """(token id, accuracy) of the laziest MLM: always predict the most frequent non-special
    token of `token_ids` (the training text, an iterable of id sequences) at every masked
    position of `labels`."""
    counts = np.zeros(0, dtype=np.int64)
    for ids in token_ids:
        ids = np.asarray(ids, dtype=np.int64)
        if counts.size <= ids.max(initial=-1):
            counts = np.pad(counts, (0, int(ids.max()) + 1 - counts.size))
        counts += np.bincount(ids, minlength=counts.size)
    counts[[i for i in special_token_ids if 0 <= i < counts.size]] = 0
    if counts.sum() == 0:
        raise ValueError("unigram_baseline needs some non-special training tokens")
    best = int(counts.argmax())
    gold = labels[labels != IGNORE]
    if gold.numel() == 0:
        raise ValueError("labels select no position (all are -100)")
    return best, float((gold == best).float().mean())


# --- next-sentence prediction -----------------------------------------------------------------

def make_nsp_pairs(documents: Sequence[Sequence[str]], *, seed: int = 0) -> list[dict]:
    """Sentence pairs for next-sentence prediction: dicts with `a`, `b` and `is_next`.

    Every pair of consecutive sentences of a document gives one example; for half of them
    (exactly, by a seeded shuffle) `b` is the true next sentence (IsNext); for the other half
    `b` is a random sentence of a random *other* document (NotNext). Blank sentences are
    dropped first. One sentence per segment: BERT packed several sentences into each segment
    up to its token budget, but the course corpora's sentences already fill much of ours.
    """
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise TypeError("documents must be a list of documents, each a list of sentences")
    docs = []
    for number, document in enumerate(documents):
        if isinstance(document, str) or not isinstance(document, Sequence):
            raise TypeError(f"documents[{number}] must be a list of sentences, "
                            f"got {type(document).__name__}")
        bad = next((s for s in document if not isinstance(s, str)), None)
        if bad is not None:
            raise TypeError(f"documents[{number}] holds a {type(bad).__name__}, "
                            "expected sentences as strings")
        docs.append([s for s in document if s.strip()])
    sources = [d for d, doc in enumerate(docs) if doc]  # documents a NotNext b can come from
    if len(sources) < 2:
        raise ValueError("make_nsp_pairs needs at least two non-empty documents "
                         "(NotNext takes its second sentence from another document)")
    positions = [(d, i) for d, doc in enumerate(docs) for i in range(len(doc) - 1)]
    if not positions:
        raise ValueError("no document has two sentences, so there is no IsNext pair to make")

    rng = np.random.default_rng(seed)
    is_next = rng.permutation(np.arange(len(positions)) < (len(positions) + 1) // 2)
    rank = {d: k for k, d in enumerate(sources)}
    pairs = []
    for (d, i), nxt in zip(positions, is_next):
        if nxt:
            b = docs[d][i + 1]
        else:
            # uniform over the other documents: draw among n - 1, then step over d itself
            k = int(rng.integers(len(sources) - 1))
            other = docs[sources[k + (k >= rank[d])]]
            b = other[int(rng.integers(len(other)))]
        pairs.append({"a": docs[d][i], "b": b, "is_next": bool(nxt)})
    return pairs


def build_pretraining_pairs(corpora: dict[str, Sequence[Sequence[str]]], *, heldout_pairs: int,
                            seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(training pairs, held-out pairs) from {language: documents}.

    The held-out pairs come from documents that training never sees, about `heldout_pairs`
    in all, shared equally by the languages. NotNext pairs take their second sentence from the
    same language, or NSP would be the trivial task "did the language change?". Each pair also
    gets a `lang` key.
    """
    if not corpora:
        raise ValueError("corpora is empty; give {language: documents}, "
                         "e.g. {'en': load_corpus('en')}")
    if heldout_pairs < 1:
        raise ValueError(f"heldout_pairs must be at least 1, got {heldout_pairs}")
    budget = -(-heldout_pairs // len(corpora))  # per language, rounded up
    train, heldout = [], []
    for lang, documents in corpora.items():
        order = np.random.default_rng(seed).permutation(len(documents))
        held, count = [], 0
        for index in order:  # whole documents, until they hold enough pairs
            if count >= budget and len(held) >= 2:
                break
            held.append(index)
            count += max(0, sum(1 for s in documents[index] if s.strip()) - 1)
        taken = set(held)
        rest = [documents[i] for i in range(len(documents)) if i not in taken]
        if len(rest) < 2:
            raise ValueError(f"{lang}: {len(documents)} documents are too few to hold out "
                             f"{budget} pairs and still train; lower heldout_pairs")
        heldout += [dict(p, lang=lang) for p in
                    make_nsp_pairs([documents[i] for i in held], seed=seed)[:budget]]
        train += [dict(p, lang=lang) for p in make_nsp_pairs(rest, seed=seed)]
    return train, heldout


# --- batches ------------------------------------------------------------------------------------

class PretrainingCollator:
    """Turns examples into a masked, padded batch for BertForPreTraining / BertForMaskedLM.

    Examples are sentence pairs {"a", "b", "is_next"} (as `make_nsp_pairs` makes them),
    single texts {"text"}, or either already tokenised (`pretrain` tokenises its pairs once).
    Each pair is tokenised as [CLS] a [SEP] b [SEP] (token_type_ids 0 for a, 1 for b), cut to
    `max_length` tokens (the longer segment loses tokens first); a batch is padded to its
    longest example and masked afresh by `mask_tokens`, so the model sees new masks every
    epoch. With nsp=True the batch also holds next_sentence_label (0 = IsNext,
    1 = NotNext: the transformers convention).
    """

    def __init__(self, tokenizer, *, max_length: int, nsp: bool = True,
                 mlm_probability: float = MLM_PROBABILITY,
                 generator: torch.Generator | None = None):
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a mask token and a pad token for MLM")
        if max_length < 3:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        self.tokenizer, self.max_length, self.nsp = tokenizer, max_length, nsp
        self.mlm_probability, self.generator = mlm_probability, generator
        # [UNK] is special too: predicting "unknown" teaches nothing
        self.special_ids = sorted(set(tokenizer.all_special_ids) | {tokenizer.pad_token_id})
        # multiples of 8 suit GPU tensor cores; on a CPU they would only add padding
        self.pad_to = 8 if torch.cuda.is_available() else None

    def encode(self, examples: Sequence[dict], **kwargs):
        """The tokenizer's encoding of `examples` (pairs or texts), truncated, not masked."""
        if not examples:
            raise ValueError("cannot make a batch of no examples")
        if all("a" in e and "b" in e for e in examples):
            texts = ([e["a"] for e in examples], [e["b"] for e in examples])
        elif not self.nsp and all("text" in e for e in examples):
            texts = ([e["text"] for e in examples],)
        else:
            need = '"a", "b" and "is_next"' if self.nsp else '"a" and "b", or "text"'
            raise ValueError(f"each example needs the keys {need}; got {sorted(examples[0])}")
        return self.tokenizer(*texts, truncation=True, max_length=self.max_length,
                              return_token_type_ids=True, **kwargs)

    def _pad(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """What `encode(..., padding=True)` returns, from examples already tokenised (by hand:
        `tokenizer.pad` takes about 30 times as long, which is what tokenising once saves)."""
        longest = max(len(e["input_ids"]) for e in examples)
        if self.pad_to:
            longest = -(-longest // self.pad_to) * self.pad_to
        shape = (len(examples), longest)
        enc = {"input_ids": np.full(shape, self.tokenizer.pad_token_id, dtype=np.int64),
               "token_type_ids": np.zeros(shape, dtype=np.int64),
               "attention_mask": np.zeros(shape, dtype=np.int64)}
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            enc["input_ids"][row, :n] = example["input_ids"]
            enc["token_type_ids"][row, :n] = example["token_type_ids"]
            enc["attention_mask"][row, :n] = 1
        return {key: torch.from_numpy(value) for key, value in enc.items()}

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        if self.nsp and not all("is_next" in e for e in examples):
            raise ValueError('NSP batches need "is_next" in every example')
        if all("input_ids" in e for e in examples):  # tokenised once, by `pretrain`
            enc = self._pad(examples)
        else:
            enc = self.encode(examples, padding=True, pad_to_multiple_of=self.pad_to,
                              return_tensors="pt")
        inputs, labels = mask_tokens(
            enc["input_ids"], mask_token_id=self.tokenizer.mask_token_id,
            vocab_size=len(self.tokenizer), special_token_ids=self.special_ids,
            mlm_probability=self.mlm_probability, generator=self.generator)
        batch = {"input_ids": inputs, "token_type_ids": enc["token_type_ids"],
                 "attention_mask": enc["attention_mask"], "labels": labels}
        if self.nsp:
            batch["next_sentence_label"] = torch.tensor(
                [0 if e["is_next"] else 1 for e in examples], dtype=torch.long)
        return batch


# --- the model and its loss ---------------------------------------------------------------------

def new_mini_bert(profile, tokenizer=None, *, nsp: bool = True, seed: int = 0):
    """A freshly initialised mini BERT of the profile's size (profile.mini_bert):
    BertForPreTraining (MLM + NSP heads) when nsp, else BertForMaskedLM (MLM head only).
    The same seed gives the same initial weights; the global random state is left as it was."""
    from transformers import BertForMaskedLM, BertForPreTraining

    from helpers.models import mini_bert_config
    from helpers.tokenization import course_tokenizer

    tokenizer = tokenizer or course_tokenizer(profile)
    config = mini_bert_config(profile, len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return (BertForPreTraining if nsp else BertForMaskedLM)(config)


class PretrainingObjective(torch.nn.Module):
    """The pretraining loss of a BertForPreTraining (MLM + NSP) or a *ForMaskedLM (MLM).

    It equals the model's own forward(labels=...) loss, but for BERT models the vocabulary
    projection (hidden x vocabulary, the largest matrix product of a small BERT) runs only at
    the ~15% masked positions, the only ones the loss reads. The output also holds the MLM and
    NSP losses separately.
    """

    def __init__(self, model, *, nsp: bool):
        super().__init__()
        self.model, self.nsp = model, nsp
        # BERT-family models (all of this course's) expose their encoder and heads
        self.fast = hasattr(model, "bert") and hasattr(model, "cls")
        if nsp and not (self.fast and hasattr(model.cls, "seq_relationship")):
            raise ValueError(f"NSP needs a BertForPreTraining (it has the NSP head), got "
                             f"{type(model).__name__}; use nsp=False for MLM only")

    def forward(self, input_ids, attention_mask, labels, token_type_ids=None,
                next_sentence_label=None):
        selected = labels != IGNORE
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if self.fast:
            encoded = self.model.bert(**inputs)
            scores = self.model.cls.predictions(encoded.last_hidden_state[selected])
        else:
            scores = self.model(**inputs).logits[selected]
        gold = labels[selected]
        # a mean over the selected tokens, and 0 (not NaN) for a batch without any
        mlm_loss = torch.nn.functional.cross_entropy(scores.float(), gold, reduction="sum") \
            / selected.sum().clamp(min=1)
        out = SimpleNamespace(loss=mlm_loss, mlm_loss=mlm_loss, mlm_scores=scores,
                              mlm_labels=gold, nsp_loss=None, nsp_logits=None)
        if self.nsp:
            if next_sentence_label is None:
                raise ValueError("nsp=True needs next_sentence_label in the batch")
            out.nsp_logits = self.model.cls.seq_relationship(encoded.pooler_output)
            out.nsp_loss = torch.nn.functional.cross_entropy(out.nsp_logits.float(),
                                                             next_sentence_label)
            out.loss = mlm_loss + out.nsp_loss
        return out


def evaluate_pretraining(objective: PretrainingObjective, batches: Sequence[dict]) -> dict:
    """MLM loss and accuracy over every masked token of `batches` (and NSP loss and accuracy
    over their pairs when the objective has NSP), as {"val_mlm_loss", ...}."""
    device = next(objective.parameters()).device
    sums = dict(mlm_loss=0.0, mlm_correct=0, tokens=0, nsp_loss=0.0, nsp_correct=0, pairs=0)
    with eval_mode(objective):
        for batch in batches:
            out = objective(**{k: v.to(device) for k, v in batch.items()})
            n = out.mlm_labels.numel()
            sums["mlm_loss"] += float(out.mlm_loss) * n
            sums["mlm_correct"] += int((out.mlm_scores.argmax(-1) == out.mlm_labels).sum())
            sums["tokens"] += n
            if out.nsp_logits is not None:
                gold = batch["next_sentence_label"].to(device)
                sums["nsp_loss"] += float(out.nsp_loss) * len(gold)
                sums["nsp_correct"] += int((out.nsp_logits.argmax(-1) == gold).sum())
                sums["pairs"] += len(gold)
    if sums["tokens"] == 0:
        raise ValueError("the evaluation batches hold no masked token")
    scores = {"val_mlm_loss": sums["mlm_loss"] / sums["tokens"],
              "val_mlm_accuracy": sums["mlm_correct"] / sums["tokens"]}
    if sums["pairs"]:
        scores.update(val_nsp_loss=sums["nsp_loss"] / sums["pairs"],
                      val_nsp_accuracy=sums["nsp_correct"] / sums["pairs"])
    return scores


def heldout_batches(collator: PretrainingCollator, examples: Sequence[dict], batch_size: int,
                    *, seed: int = 0) -> list[dict]:
    """`examples` masked once, with their own seeded generator: every evaluation scores the
    same positions, and evaluating draws nothing from the training's random state."""
    fixed = PretrainingCollator(collator.tokenizer, max_length=collator.max_length,
                                nsp=collator.nsp, mlm_probability=collator.mlm_probability,
                                generator=torch.Generator().manual_seed(seed))
    return [fixed(list(examples[i:i + batch_size])) for i in range(0, len(examples), batch_size)]


# --- pretraining ----------------------------------------------------------------------------------

def _tokenise_once(collator: PretrainingCollator, examples, chunk: int = 2048,
                   progress: bool = True):
    """Every example tokenised once, as small arrays the collator pads (tokenising the same
    pairs again in every batch held back a GPU), and the training tokens as one array per chunk
    (for the unigram baseline)."""
    from tqdm.auto import tqdm

    encoded, chunks = [], []
    for start in tqdm(range(0, len(examples), chunk), desc="tokenising",
                      disable=not progress or len(examples) <= chunk):
        part = examples[start:start + chunk]
        enc = collator.encode(part)
        for example, ids, types in zip(part, enc["input_ids"], enc["token_type_ids"]):
            item = {"input_ids": np.array(ids, dtype=np.int32),
                    "token_type_ids": np.array(types, dtype=np.int8)}
            if "is_next" in example:
                item["is_next"] = example["is_next"]
            encoded.append(item)
        chunks.append(np.concatenate([e["input_ids"] for e in encoded[start:]]))
    return encoded, chunks


def _check_fits(model, tokenizer, max_length: int, heldout_examples) -> None:
    config = model.config
    if max_length > config.max_position_embeddings:
        raise ValueError(f"max_length {max_length} exceeds the model's "
                         f"{config.max_position_embeddings} positions")
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{config.vocab_size} embeddings; build the model for this tokenizer")
    if not heldout_examples:
        raise ValueError("heldout_examples is empty: pretraining needs a held-out set to score")


def pretrain(model, tokenizer, train_examples: Sequence[dict], heldout_examples: Sequence[dict],
             *, profile, nsp: bool = True, max_steps: int | None = None,
             batch_size: int | None = None, learning_rate: float | None = None,
             max_length: int | None = None, seed: int = 0, output_dir: str | Path | None = None,
             resume: bool = False, stop_after: int | None = None, evaluations: int = 10,
             progress: bool = True, desc: str | None = None, on_step: Callable | None = None):
    """Pretrain `model` with MLM (+ NSP when nsp) on `train_examples` (pairs from
    `build_pretraining_pairs`, or {"text": ...} for MLM only); returns train_loop's TrainResult.

    Sizes default to the profile's pretrain_* fields. About `evaluations` times the held-out
    examples are scored (history: val_mlm_loss, val_mlm_accuracy, with NSP val_nsp_*); the
    weights with the best held-out MLM accuracy are kept. output_dir, resume, stop_after,
    on_step: as in train_loop. result.info adds unigram_baseline and unigram_token,
    tokens_per_s (evaluation excluded), tokens_per_step, train_tokens and the set sizes.
    """
    from accelerate import PartialState

    from helpers.loop import length_grouped_batches, train_loop

    max_steps = max_steps or profile.pretrain_steps
    batch_size = batch_size or profile.pretrain_batch_size
    _check_fits(model, tokenizer, max_length or profile.pretrain_seq_len, heldout_examples)
    collator = PretrainingCollator(tokenizer, max_length=max_length or profile.pretrain_seq_len,
                                   nsp=nsp)
    encoded, train_tokens = _tokenise_once(collator, train_examples, progress=progress)
    lengths = [len(e["input_ids"]) for e in encoded]
    held_out = heldout_batches(collator, heldout_examples, batch_size, seed=seed)
    token, baseline = unigram_baseline(train_tokens, torch.cat(
        [b["labels"].flatten() for b in held_out]), collator.special_ids)
    clock = dict(eval_s=0.0)  # evaluation time is left out of tokens_per_s

    def eval_fn(wrapped):
        start = time.perf_counter()
        scores = evaluate_pretraining(wrapped, held_out)
        clock["eval_s"] += time.perf_counter() - start
        return scores

    started = time.perf_counter()
    result = train_loop(
        PretrainingObjective(model, nsp=nsp), encoded, collator,
        batches=lambda epoch: length_grouped_batches(lengths, batch_size, seed=seed, epoch=epoch),
        eval_fn=eval_fn, metric="val_mlm_accuracy", profile=profile, seed=seed,
        max_steps=max_steps, batch_size=batch_size,
        learning_rate=learning_rate or profile.pretrain_learning_rate,
        output_dir=output_dir, checkpoint_every=profile.checkpoint_every, resume=resume,
        stop_after=stop_after, eval_every=max(1, max_steps // max(1, evaluations)),
        log_every=max(1, max_steps // 50), on_step=on_step, progress=progress,
        desc=desc or ("pretraining MLM+NSP" if nsp else "pretraining MLM"))
    tokens_per_step = float(np.mean(lengths)) * batch_size * PartialState().num_processes
    training_s = time.perf_counter() - started - clock["eval_s"]
    steps = result.info["session_steps"]  # not counted in on_step: that reads the loss every step
    result.model = model
    result.info.update(
        nsp=nsp, unigram_token=tokenizer.convert_ids_to_tokens(token), unigram_baseline=baseline,
        tokens_per_step=tokens_per_step, train_examples=len(train_examples),
        heldout_examples=len(heldout_examples), train_tokens=int(sum(lengths)),
        tokens_per_s=steps * tokens_per_step / training_s if steps else None)
    return result


def fill_mask(model, tokenizer, text: str, *, top_k: int = 5) -> list[tuple[str, float]]:
    """The model's `top_k` guesses (token, probability) for the one mask token in `text`."""
    if text.count(tokenizer.mask_token) != 1:
        raise ValueError(f"text must contain {tokenizer.mask_token} exactly once: {text!r}")
    enc = tokenizer(text, return_tensors="pt").to(next(model.parameters()).device)
    with eval_mode(model):
        out = model(**enc)
    logits = out.prediction_logits if hasattr(out, "prediction_logits") else out.logits
    where = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0]
    probs = torch.softmax(logits[0, where].float(), dim=-1)
    top = probs.topk(top_k)
    return [(tokenizer.convert_ids_to_tokens(int(i)), float(p))
            for p, i in zip(top.values, top.indices)]


# --- whole recipes: the mini BERT, continued pretraining, saving ----------------------------------

def checkpoint_path(nsp: bool = True) -> Path:
    """Where the notebook and the command line keep the pretrained mini BERT:
    build_dir()/checkpoints/mini-bert (MLM + NSP; load_encoder("mini-bert") reads it) and
    .../mini-bert-mlm-only (the ablation without NSP)."""
    from helpers.models import mini_bert_checkpoint

    return mini_bert_checkpoint() if nsp else mini_bert_checkpoint().with_name("mini-bert-mlm-only")


def load_corpora(profile, langs: Sequence[str] = LANGS) -> dict:
    """{language: documents} of the pretraining corpora, at most
    profile.pretrain_max_documents documents per language."""
    from helpers.data import load_corpus

    return {lang: load_corpus(lang)[:profile.pretrain_max_documents] for lang in langs}


def pretrain_mini_bert(profile, *, nsp: bool = True,
                       output_dir: str | Path | None = None, max_steps: int | None = None,
                       seed: int = 0, resume: bool = False, stop_after: int | None = None,
                       langs: Sequence[str] = LANGS, progress: bool = True):
    """The whole recipe of notebook 03: course tokenizer, corpora, pairs, a fresh mini BERT,
    `pretrain`. Returns (result, tokenizer); result.model is the pretrained model."""
    from helpers.tokenization import course_tokenizer

    tokenizer = course_tokenizer(profile)
    batch_size = profile.pretrain_batch_size
    train, heldout = build_pretraining_pairs(load_corpora(profile, langs),
                                             heldout_pairs=EVAL_BATCHES * batch_size, seed=seed)
    model = new_mini_bert(profile, tokenizer, nsp=nsp, seed=seed)
    result = pretrain(model, tokenizer, train, heldout, nsp=nsp, profile=profile,
                      max_steps=max_steps, seed=seed, output_dir=output_dir, resume=resume,
                      stop_after=stop_after, progress=progress)
    return result, tokenizer


def summarize(result) -> dict:
    """The headline numbers of a pretraining run (the last held-out evaluation)."""
    history = result.history
    last = history.dropna(subset=["val_mlm_accuracy"]).iloc[-1]
    summary = {"steps": int(result.steps), "nsp": bool(result.info["nsp"]),
               "val_mlm_accuracy": float(last["val_mlm_accuracy"]),
               "val_mlm_loss": float(last["val_mlm_loss"]),
               "unigram_baseline": float(result.info["unigram_baseline"]),
               "tokens_per_s": result.info["tokens_per_s"],
               "train_examples": int(result.info["train_examples"])}
    if "val_nsp_accuracy" in last and not np.isnan(last["val_nsp_accuracy"]):
        summary.update(val_nsp_accuracy=float(last["val_nsp_accuracy"]),
                       val_nsp_loss=float(last["val_nsp_loss"]))
    return summary


def save_pretrained_model(model, tokenizer, path: str | Path, summary: dict | None = None) -> Path:
    """Model and tokenizer with save_pretrained (safetensors), plus `summary` as
    pretraining.json; load_encoder(path) or from_pretrained(path) read it back."""
    from helpers import quiet

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    quiet.save_pretrained(model, path)
    tokenizer.save_pretrained(path)
    if summary is not None:
        write_json(path / RESULTS_FILE, summary)
    return path


def load_for_pretraining(name: str):
    """(model, tokenizer) of a registry name or directory with pretraining heads:
    BertForPreTraining when the checkpoint has them (a notebook-03 mini-bert keeps its NSP head
    and pooler), else a *ForMaskedLM (an encoder without an MLM head gets a fresh one)."""
    from transformers import (AutoConfig, AutoModelForMaskedLM, AutoModelForPreTraining,
                              AutoTokenizer)

    from helpers import quiet
    from helpers.models import resolve

    source = resolve(name)
    if name == "mini-bert" and not (Path(source) / "config.json").is_file():
        raise FileNotFoundError(f"no pretrained mini-bert in {source}; run notebook 03 or "
                                "`python -m helpers pretrain`")
    config = AutoConfig.from_pretrained(source)
    with_nsp = any(a.endswith("ForPreTraining") for a in config.architectures or [])
    auto = AutoModelForPreTraining if with_nsp else AutoModelForMaskedLM
    return quiet.from_pretrained(auto, source, use_safetensors=True), AutoTokenizer.from_pretrained(source)


def continue_pretraining(model, tokenizer, texts: Sequence[str], *,
                         heldout_texts: Sequence[str] | None = None,
                         profile, max_steps: int | None = None,
                         learning_rate: float | None = None, max_length: int | None = None,
                         seed: int = 0, **kwargs):
    """More MLM pretraining of an already pretrained model on `texts` (domain-adaptive
    pretraining). Returns `pretrain`'s TrainResult.

    model: from `load_for_pretraining` (or any BertForPreTraining / *ForMaskedLM); only its
        MLM head and encoder train. heldout_texts: scored during training; default: a seeded
        tenth of `texts` (at most 8 batches), which is then left out of training.
    Defaults: profile.pretrain_steps steps; a learning rate of a fifth of the from-scratch
    one (a pretrained model needs smaller steps); texts cut to profile.max_seq_len, the
    length fine-tuning will use. Other keyword arguments go to `pretrain`.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    batch_size = kwargs.get("batch_size") or profile.pretrain_batch_size
    if heldout_texts is None:
        if len(texts) < 2:
            raise ValueError(f"continue_pretraining needs at least 2 texts, got {len(texts)}")
        order = np.random.default_rng(seed).permutation(len(texts))
        n = min(max(1, len(texts) // 10), EVAL_BATCHES * batch_size)
        heldout_texts = [texts[i] for i in order[:n]]
        texts = [texts[i] for i in sorted(order[n:])]
    if not texts:
        raise ValueError("no non-empty text to pretrain on")
    return pretrain(model, tokenizer, [{"text": t} for t in texts],
                    [{"text": t} for t in heldout_texts], nsp=False, profile=profile,
                    max_steps=max_steps,
                    learning_rate=learning_rate or profile.pretrain_learning_rate / 5,
                    max_length=max_length or profile.max_seq_len, seed=seed,
                    desc="continued MLM pretraining", **kwargs)

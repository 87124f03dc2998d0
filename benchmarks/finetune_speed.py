"""Fine-tuning throughput: our loop against the seed article's loop and transformers' Trainer.

    .venv/bin/python benchmarks/finetune_speed.py [--examples 384] [--seed-examples 96]

Same model (all-MiniLM-L6-v2 with a fresh classification head, the same initial weights for
every contender), same English training reviews, same batch size, learning rate and maximum
length (the cpu profile), 2 CPU threads. Word embeddings are frozen for every contender when
the profile freezes them (--train-embeddings to train them everywhere).

- seed loop: what the seed article does (fixed to run): one unpadded example at a time,
  model.train(), an optimizer step per example (torch's AdamW with its CPU default). It is
  timed twice: as written (every weight trained, float32) and like-for-like (the same
  trainable weights and the same precision as ours).
- Trainer: transformers' Trainer with dynamic padding (DataCollatorWithPadding), once with
  its default sampler and once with train_sampling_strategy="group_by_length"; bf16 exactly
  when ours uses it.
- Precision: the cpu profile asks for bf16 autocast, which helpers.training turns on only
  where the CPU has bf16 instructions (helpers.training.uses_bf16); elsewhere all run float32.
- ours: helpers.training.finetune (length-grouped batches, dynamic padding).

Each figure is examples per second over one pass (the fastest of --rounds), tokenisation
included; process CPU time is printed too, since it moves less than wall time when other
jobs share the cores. This is a benchmark, not a test: run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from helpers.config import get_profile, set_seed, with_overrides  # noqa: E402


def seed_loop(model, tokenizer, texts, labels, profile, bf16=False):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=profile.learning_rate)
    for text, label in zip(texts, labels):
        enc = tokenizer(text, truncation=True, max_length=profile.max_seq_len,
                        return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**enc, labels=torch.tensor([label])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def trainer_loop(model, tokenizer, train, profile, group_by_length, bf16):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    tokenized = train.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=profile.max_seq_len),
        batched=True, remove_columns=[c for c in train.column_names if c != "label"])
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=profile.batch_size,
            num_train_epochs=1, learning_rate=profile.learning_rate,
            warmup_steps=profile.warmup_ratio, weight_decay=0.01, use_cpu=True, bf16=bf16,
            report_to="none", save_strategy="no", logging_strategy="no",
            disable_tqdm=True, dataloader_num_workers=0, seed=0,
            train_sampling_strategy="group_by_length" if group_by_length else "random")
        Trainer(model=model, args=args, train_dataset=tokenized,
                data_collator=DataCollatorWithPadding(tokenizer)).train()


def our_loop(model, tokenizer, train, profile):
    from helpers.training import finetune

    return finetune(model, tokenizer, train, profile=profile, epochs=1, progress=False,
                    freeze_embeddings=False)  # already frozen (or not) by the caller


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=384,
                        help="training reviews for our loop and Trainer")
    parser.add_argument("--seed-examples", type=int, default=96,
                        help="reviews for the (slow) seed loop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="passes per contender; the "
                        "fastest counts (more rounds damp the noise of a shared machine)")
    parser.add_argument("--train-embeddings", action="store_true",
                        help="train the word embeddings too (the cpu profile freezes them)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    from helpers.data import load_reviews
    from helpers.models import load_encoder
    from helpers.training import freeze_word_embeddings, length_grouped_batches, padding_fraction
    from helpers.training import random_batches, uses_bf16

    hf_logging.set_verbosity_error()
    profile = get_profile("cpu")
    if args.train_embeddings:
        profile = with_overrides(profile, freeze_embeddings=False)
    reviews = load_reviews("train", langs="en").shuffle(seed=0)
    n = min(args.examples, len(reviews))
    train = reviews.select(range(n))
    set_seed(0)
    base, tokenizer = load_encoder("minilm-en", num_labels=2)
    if profile.freeze_embeddings:
        freeze_word_embeddings(base)
    trainable = sum(p.numel() for p in base.parameters() if p.requires_grad)
    bf16 = uses_bf16(profile.bf16)  # what our loop will do

    lengths = [len(ids) for ids in tokenizer(list(train["text"]), truncation=True,
                                              max_length=profile.max_seq_len)["input_ids"]]
    grouped = padding_fraction(length_grouped_batches(lengths, profile.batch_size, seed=0,
                                                      epoch=0), lengths)
    shuffled = padding_fraction(random_batches(n, profile.batch_size, seed=0, epoch=0), lengths)
    print(f"minilm-en, {trainable / 1e6:.1f}M trainable parameters (word embeddings "
          f"{'frozen' if profile.freeze_embeddings else 'trained'}), batch {profile.batch_size}, "
          f"max_len {profile.max_seq_len}, {args.threads} threads, "
          f"{'bf16 autocast' if bf16 else 'float32'} (seed loop as written: float32), "
          f"mean review length {sum(lengths) / n:.1f} tokens")
    print(f"padding share of the batches: random {shuffled:.1%}, length-grouped {grouped:.1%}")

    def timed(name, examples, run, unfreeze=False):
        """Best of `--rounds` passes, each on a fresh copy of the same initial model."""
        best = None
        for _ in range(args.rounds):
            model = copy.deepcopy(base)
            if unfreeze:
                model.requires_grad_(True)
            wall, cpu = time.perf_counter(), time.process_time()
            run(model)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best = (wall, cpu) if best is None or wall < best[0] else best
        wall, cpu = best
        print(f"{name:<27} {examples:>4} examples: {examples / wall:6.2f} examples/s "
              f"({wall:6.1f} s wall, {cpu:6.1f} s CPU)", flush=True)
        return examples / wall, examples / cpu

    k = min(args.seed_examples, n)
    texts, labels = list(train["text"][:k]), list(train["label"][:k])
    rates = {}
    # the article trains every weight in float32
    rates["seed as written"] = timed(
        "seed loop as written", k,
        lambda m: seed_loop(m, tokenizer, texts, labels, profile), unfreeze=True)
    rates.update({
        "seed loop": timed("seed loop, like-for-like", k,
                           lambda m: seed_loop(m, tokenizer, texts, labels, profile, bf16)),
        "Trainer": timed("Trainer", n, lambda m: trainer_loop(m, tokenizer, train, profile,
                                                              False, bf16)),
        "Trainer grouped": timed("Trainer, group_by_length", n, lambda m: trainer_loop(
            m, tokenizer, train, profile, True, bf16)),
        "ours": timed("ours (helpers.training)", n, lambda m: our_loop(
            m, tokenizer, train, profile)),
    })
    goals = {"seed as written": " (goal >= 8x)", "seed loop": " (goal >= 8x)",
             "Trainer": " (goal >= 1.0x)"}
    print("ratio of examples/s, by wall time and by process CPU time:")
    for other in rates:
        if other == "ours":
            continue
        wall = rates["ours"][0] / rates[other][0]
        cpu = rates["ours"][1] / rates[other][1]
        print(f"  ours / {other:<16} {wall:5.2f}x wall, {cpu:5.2f}x CPU{goals.get(other, '')}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} "
          "(numbers are only comparable on an idle machine)")


if __name__ == "__main__":
    main()

"""Where the time of BERT training goes: FLOPs per token, GPU peaks, tokens/s, TFLOP/s, MFU.

FLOPs per token, counted from the matrix products (one multiply-add = 2 FLOPs):

    training = 6 * N + 12 * L * s * h        forward only = 2 * N + 4 * L * s * h

- N: weights that take part in a matrix product for every token. Each of the L encoder
  layers has 4 h x h projections (query, key, value, attention output) and two feed-forward
  matrices (h x f, f x h): N_layer = 4h^2 + 2hf. The MLM head adds its transform (h^2) and the
  vocabulary projection (h x V). A forward pass costs 2 FLOPs per weight and token; the
  backward pass twice that (gradients for the inputs and for the weights), hence 2 + 4 = 6.
- The attention scores Q K^T and the context (scores x V) do not involve weights: per layer and
  token each is s x h multiply-adds over the s positions of the sequence, so 2 * 2sh forward and
  3 x that with the backward pass: 12 * L * s * h.
- Left out: the embedding lookup (an index, not a product), biases, LayerNorm, softmax, GELU
  and the loss (elementwise: a few percent of the time on a GPU, not of the FLOPs). Heads
  that read one token per sequence (pooler, classifier, NSP) add their weights / s per token.
  torch.utils.flop_counter.FlopCounterMode counts the same products; tests/test_bench.py
  checks the two agree exactly.

MFU (model FLOPs utilisation) = achieved FLOP/s / the chip's peak FLOP/s. The peaks below are
vendors' dense (no sparsity) tensor-core figures, not measurements.

`python -m helpers bench` (helpers.cli.bench_main) times the course's loop (helpers.loop.train_loop)
and transformers' Trainer on random tokens with a BERT built from a config: no data sets, no
downloaded weights. This module imports only the standard library and torch at load time.
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass

import torch

from helpers.config import PROFILES, Profile
from helpers.runtime import set_seed

HEADS = ("mlm", "pretraining", "classification", None)
TASKS = ("mlm", "classification")
LOOPS = ("ours", "trainer")

# BERT sizes the bench knows: the course's two mini BERTs (smoke and cpu profiles) and
# BERT-base (Devlin et al., 2019: 12 layers, hidden 768, 12 heads, feed-forward 3072).
MODEL_SIZES = {"tiny": "smoke", "mini": "cpu", "base": dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=512, vocab_size=30522)}  # tiny, mini: those profiles' mini BERTs

# What a plain `python -m helpers bench --profile P` runs: the model size of that profile's
# mini BERT (BERT-base on a GPU) and enough steps for a stable average at that size.
BENCH_DEFAULTS = {
    "smoke": dict(model_size="tiny", steps=4, warmup=2),
    "cpu": dict(model_size="mini", steps=5, warmup=1),
    "gpu": dict(model_size="base", steps=50, warmup=10),
}


# --- FLOPs ---------------------------------------------------------------------------------

def encoder_matmul_parameters(config) -> int:
    """Weights of the encoder layers that multiply every token: L x (4h^2 + 2hf)."""
    h, f = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * h * h + 2 * h * f)


def flops_per_token(config, seq_len: int, *, head: str | None = "mlm", training: bool = True,
                    masked_fraction: float = 1.0, num_labels: int | None = None) -> float:
    """FLOPs per token of one training step (forward + backward) or one forward pass.

    head: "mlm" (BertForMaskedLM), "pretraining" (MLM + NSP), "classification"
        (BertForSequenceClassification: pooler + classifier on [CLS]) or None (the encoder).
    masked_fraction: share of positions at which the MLM head runs. 1.0 for BertForMaskedLM's
        own loss, which scores every position; helpers.pretraining.PretrainingObjective scores
        only the masked ones (about 0.15).
    num_labels: the classifier's outputs (default: config.num_labels).
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    h, layers = config.hidden_size, config.num_hidden_layers
    per_token = float(encoder_matmul_parameters(config))
    per_sequence = 0.0  # weights applied once per sequence (to [CLS])
    if head in ("mlm", "pretraining"):
        per_token += masked_fraction * (h * h + h * config.vocab_size)
    if head == "pretraining":
        per_sequence += h * h + 2 * h  # pooler, then IsNext / NotNext
    if head == "classification":
        per_sequence += h * h + h * (num_labels or config.num_labels)
    weights = per_token + per_sequence / seq_len
    attention = 4 * layers * seq_len * h  # Q K^T and scores x V, forward
    forward = 2 * weights + attention
    return 3 * forward if training else forward


# --- what a GPU can do at best ------------------------------------------------------------

@dataclass(frozen=True)
class Peak:
    device: str  # the name torch gives the device
    tflops: float  # vendor's dense tensor-core peak, TFLOP/s
    dtype: str  # the precision of that peak


# (label, pattern in torch.cuda.get_device_name(), dense TFLOP/s, dtype): the tensor-core peaks of
# NVIDIA's datasheets, dense (where a datasheet also prints a figure "with sparsity", it is twice
# this), not measurements. The first pattern that matches wins.
GPU_PEAKS = (
    ("H200", r"\bH200\b", 989.0, "bf16"),
    ("H100 PCIe", r"\bH100\b.*\bPCIe\b", 756.0, "bf16"),
    ("H100 SXM", r"\bH100\b", 989.0, "bf16"),
    ("A100", r"\bA100\b", 312.0, "bf16"),
    ("L4", r"\bL4\b", 121.0, "bf16"),
    ("T4", r"\bT4\b", 65.0, "fp16"),  # Turing has no bf16 tensor cores
    ("RTX 4090", r"\bRTX 4090\b", 165.0, "bf16"),
)


def gpu_peak(device_name: str | None = None) -> Peak | None:
    """The peak of `device_name` (default: the current CUDA device), None when unknown or when
    there is no GPU."""
    if device_name is None:
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    for _, pattern, tflops, dtype in GPU_PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return Peak(device_name, tflops, dtype)
    return None


# --- models and random data ----------------------------------------------------------------

def bert_config(model_size: str, **overrides):
    """A BertConfig of one of MODEL_SIZES (tiny, mini, base), with `overrides` applied."""
    from transformers import BertConfig

    from helpers.models import mini_bert_config

    if model_size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {model_size!r}; valid sizes: "
                         f"{', '.join(MODEL_SIZES)}")
    size = MODEL_SIZES[model_size]
    if isinstance(size, str):
        return mini_bert_config(PROFILES[size], **overrides)
    return BertConfig(**{**size, **overrides})


def build_model(config, task: str, *, seed: int = 0, attn_implementation: str | None = None):
    """A freshly initialised BertForMaskedLM ("mlm") or BertForSequenceClassification."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    auto = AutoModelForMaskedLM if task == "mlm" else AutoModelForSequenceClassification
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with torch.random.fork_rng():  # same seed, same weights; global random state untouched
        torch.manual_seed(seed)
        return auto.from_config(config, **kwargs)


def random_examples(config, task: str, n: int, seq_len: int, *, seed: int = 0) -> list[dict]:
    """n examples of `seq_len` random tokens each (no padding), as a list of tensor dicts.

    MLM examples are masked by helpers.pretraining.mask_tokens (ids 0-4 play the special
    tokens: 0 = [PAD], 4 = [MASK]); classification examples get a random label.
    """
    from helpers.pretraining import mask_tokens

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (n, seq_len), generator=generator)
    if task == "mlm":
        inputs, labels = mask_tokens(ids, mask_token_id=4, vocab_size=config.vocab_size,
                                     special_token_ids=range(5), generator=generator)
    else:
        inputs = ids
        labels = torch.randint(config.num_labels, (n,), generator=generator)
    mask, types = torch.ones_like(inputs), torch.zeros_like(inputs)
    return [{"input_ids": inputs[i], "attention_mask": mask[i], "token_type_ids": types[i],
             "labels": labels[i]} for i in range(n)]


def collate(examples):
    """A batch from examples of equal length: each key's tensors stacked."""
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


# --- timing the two loops ------------------------------------------------------------------

def _clock():
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # CUDA runs asynchronously: wait until the step is done
    return time.perf_counter()


def time_train_loop(model, examples, *, batch_size: int, steps: int, warmup: int,
                    profile: Profile, collate_fn=None, batches=None, **loop_kwargs) -> float:
    """Seconds of `steps` optimizer steps of helpers.loop.train_loop, after `warmup`
    untimed ones (first-step costs: memory allocation, kernel selection, AdamW's state).

    collate_fn defaults to stacking equal-length tensors; `batches` and other keyword
    arguments (grad_accum_steps, ...) go to train_loop.
    """
    from helpers.loop import train_loop

    if warmup < 1:
        raise ValueError(f"warmup must be at least 1 (the clock starts after a step), got {warmup}")
    marks = {}

    def on_step(step, loss):
        if step in (warmup, warmup + steps):
            marks[step] = _clock()

    train_loop(model, examples, collate_fn or collate, batches=batches, profile=profile,
               max_steps=warmup + steps, batch_size=batch_size, warmup_ratio=0.0,
               progress=False, on_step=on_step, log_every=warmup + steps, **loop_kwargs)
    return marks[warmup + steps] - marks[warmup]


def time_trainer(model, examples, *, batch_size: int, steps: int, warmup: int,
                 profile: Profile) -> float:
    """The same measurement for transformers' Trainer, with the same settings as train_loop:
    learning rate of the profile, no warm-up of the learning rate, weight decay 0.01,
    gradient clipping at 1, bf16 when the profile asks for it and the chip has it natively
    (helpers.loop.uses_bf16, as train_loop decides), fused AdamW."""
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from helpers.loop import uses_bf16

    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, warmup + steps):
                marks[state.global_step] = _clock()

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=warmup + steps,
            learning_rate=profile.learning_rate, warmup_steps=0, weight_decay=0.01,
            max_grad_norm=1.0, bf16=uses_bf16(profile.bf16), use_cpu=not cuda,
            report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
            dataloader_num_workers=0, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate,
                          callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)  # it prints a summary dict at the end
        trainer.train()
    return marks[warmup + steps] - marks[warmup]


def throughput(seconds: float, *, steps: int, batch_size: int, seq_len: int,
               flops_per_token: float, peak: Peak | None = None, processes: int = 1) -> dict:
    """tokens/s, achieved TFLOP/s and (with a peak) MFU of a timed run."""
    tokens = steps * batch_size * seq_len * processes
    achieved = tokens * flops_per_token / seconds
    return {"seconds": seconds, "step_ms": 1000 * seconds / steps, "tokens": tokens,
            "tokens_per_s": tokens / seconds, "tflops": achieved / 1e12,
            "mfu": achieved / (peak.tflops * 1e12 * processes) if peak else None}


def bench(model_size: str = "tiny", *, seq_len: int, batch_size: int, steps: int,
          warmup: int = 2, profile: Profile, tasks=TASKS, loops=LOOPS,
          attn_implementation: str | None = None, seed: int = 0) -> list[dict]:
    """Time each loop on each task with the same model (same initial weights) and data; one
    dict per (loop, task) with the figures of `throughput` and the FLOPs per token."""
    config = bert_config(model_size, num_labels=2)
    if seq_len > config.max_position_embeddings:
        raise ValueError(f"seq_len {seq_len} exceeds the {model_size} model's "
                         f"{config.max_position_embeddings} positions")
    peak = gpu_peak()
    from accelerate import PartialState

    processes = PartialState().num_processes  # > 1 under torchrun / accelerate launch
    timers = {"ours": time_train_loop, "trainer": time_trainer}
    rows = []
    for task in tasks:
        # every process gets its own batches: enough examples for all of them
        examples = random_examples(config, task, (warmup + steps) * batch_size * processes,
                                   seq_len, seed=seed)
        per_token = flops_per_token(config, seq_len, head=task)
        for loop in loops:
            set_seed(seed)
            model = build_model(config, task, seed=seed, attn_implementation=attn_implementation)
            seconds = timers[loop](model, examples, batch_size=batch_size, steps=steps,
                                   warmup=warmup, profile=profile)
            rows.append(dict(loop=loop, task=task, flops_per_token=per_token,
                             **throughput(seconds, steps=steps, batch_size=batch_size,
                                          seq_len=seq_len, flops_per_token=per_token,
                                          peak=peak, processes=processes)))
            del model
    return rows


# --- the command ---------------------------------------------------------------------------

LOOP_NAMES = {"ours": "ours (train_loop)", "trainer": "transformers Trainer"}


def format_table(rows: list[dict], *, gpu: bool) -> str:
    """The rows of `bench` as a fixed-width text table (GFLOP/s on a CPU, TFLOP/s and MFU on a
    GPU)."""
    header = ["loop", "task", "step ms", "tokens/s", "TFLOP/s" if gpu else "GFLOP/s"]
    if gpu:
        header.append("MFU")
    lines = []
    for r in rows:
        line = [LOOP_NAMES[r["loop"]], r["task"], f"{r['step_ms']:.1f}",
                f"{r['tokens_per_s']:,.0f}",
                f"{r['tflops']:.1f}" if gpu else f"{r['tflops'] * 1e3:.2f}"]
        if gpu:
            line.append("n/a" if r["mfu"] is None else f"{r['mfu']:.1%}")
        lines.append(line)
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(x) for x in lines])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _load() -> float:
    """The 1-minute load average: how many jobs want the cores (0 where the OS does not say)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def busy(load: float | None = None) -> bool:
    """More runnable jobs than cores (`load`: a load average already read, else read now)."""
    return (_load() if load is None else load) > (os.cpu_count() or 1)


def _machine_note() -> str:
    load = _load()  # one reading: the note's figure and its verdict agree
    note = (f"{_plural(torch.get_num_threads(), 'thread')}, "
            f"{_plural(os.cpu_count() or 1, 'core')}, load average {load:.1f}")
    if busy(load):
        note += " (other jobs share the cores: timings are pessimistic and noisy)"
    return note


def describe_run(config, size: str, tasks, profile, *, seq_len: int, batch_size: int,
                 steps: int, warmup: int) -> str:
    """What a bench run measures, on what: the lines printed above its table."""
    from helpers.loop import uses_bf16

    gpu, peak = torch.cuda.is_available(), gpu_peak()
    params = build_model(config, "mlm").num_parameters()
    lines = [f"device: {torch.cuda.get_device_name() if gpu else 'cpu'}"
             f" ({'GPU' if gpu else _machine_note()})",
             f"model: {size} BERT, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
             f"vocabulary {config.vocab_size:,} ({params / 1e6:.1f}M parameters with the MLM "
             f"head); sequences of {seq_len} random tokens, batch {batch_size}, "
             f"{_plural(steps, 'timed step')} after {_plural(warmup, 'warm-up step')}; profile "
             f"{profile.name}" + (", bf16 autocast" if uses_bf16(profile.bf16) else ", fp32")]
    lines += [f"training FLOPs per token, {task}: {flops_per_token(config, seq_len, head=task):.3e}"
              for task in tasks]
    if gpu:
        lines.append(f"peak: {peak.tflops:.0f} TFLOP/s dense {peak.dtype} (vendor figure)" if peak
                     else "peak: this GPU is not in helpers.bench.GPU_PEAKS, so no MFU")
    return "\n".join(lines)

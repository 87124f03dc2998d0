"""The one training loop of the course, fine-tuning on top of it, prediction and the CLI.

`train_loop` is generic: any model whose `forward(**batch)` returns an output with `.loss`,
any dataset you can index, any collator, any evaluation function. Pretraining (notebook 03)
and fine-tuning (notebook 04 onwards) both run on it, so there is one place where device
placement, bf16, gradient accumulation, DDP, the learning-rate schedule, early stopping,
checkpoints and exact resume are done.

`finetune` adds what text classification needs: tokenise once, dynamic padding, batches
grouped by length, accuracy and macro-F1 on a validation set each epoch.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from helpers.config import (Profile, add_profile_argument, get_profile, native_bf16,
                            release_memory, set_seed, with_overrides)

CHECKPOINT = "checkpoint"  # the latest checkpoint of a run lives in output_dir/checkpoint
MODEL_INFO = "course_model.json"  # written next to a saved fine-tuned model


# --- batches: a deterministic function of (seed, epoch) --------------------------------------

def random_batches(n: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """All n indices, shuffled by (seed, epoch), cut into batches (the last may be short)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int,
                           mega_batch: int = 50) -> list[list[int]]:
    """Batches of examples of similar length, so dynamic padding adds few pad tokens.

    Shuffle everything, sort each chunk of `mega_batch * batch_size` examples by length, cut it
    into batches, then shuffle the batches: the model still sees a fresh random order every
    epoch, but each batch holds neighbours in length.
    """
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    chunk = mega_batch * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches += [part[i:i + batch_size].tolist() for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of the tokens in padded batches that are padding."""
    real = padded = 0
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        real += sum(sizes)
        padded += max(sizes) * len(sizes)
    return 1.0 - real / padded if padded else 0.0


# --- the generic loop ----------------------------------------------------------------------

@dataclass
class TrainResult:
    model: torch.nn.Module  # best weights when there was an evaluation, else the last ones
    history: pd.DataFrame  # a row per logged step: step, epoch, train_loss, lr, elapsed_s, metrics
    best_metric: float | None
    best_step: int | None
    steps: int  # optimizer steps done so far, over all sessions of a resumed run
    completed: bool  # False when stopped by `stop_after` before the planned end
    stopped_early: bool
    checkpoint: Path | None
    info: dict = field(default_factory=dict)


def uses_bf16(bf16: bool) -> bool:
    """Whether training runs in bf16 when a profile asks for `bf16`: only where the chip that
    trains (the GPU when there is one, else the CPU) computes bf16 natively."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return bool(bf16) and native_bf16(device)


def make_accelerator(bf16: bool = False):
    """An Accelerator: bf16 autocast when asked for and the chip computes bf16 natively
    (helpers.config.native_bf16: a CUDA GPU, or a CPU with AVX512-BF16/AMX), and cpu=True
    without a GPU so that `torchrun --nproc_per_node N` on a CPU machine still gives N gloo
    processes. The weights and the optimizer stay float32 (mixed precision)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cuda = torch.cuda.is_available()
    mixed = "bf16" if uses_bf16(bf16) else "no"
    try:
        return Accelerator(cpu=not cuda, mixed_precision=mixed)
    except ValueError:
        # Accelerate keeps one global state per process; a notebook that trains once with bf16
        # and once without would otherwise have to restart its kernel.
        AcceleratorState._reset_state()
        return Accelerator(cpu=not cuda, mixed_precision=mixed)


def freeze_word_embeddings(model: torch.nn.Module) -> int:
    """Stop training the word-embedding matrix; returns how many parameters that froze."""
    weight = model.get_input_embeddings().weight
    weight.requires_grad_(False)
    return weight.numel()


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


def _param_groups(model, weight_decay):
    # Biases and LayerNorm weights are the 1-D parameters; decaying them towards 0 only hurts.
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _adamw(groups, lr):
    # The fused kernel (CUDA, and CPU since torch 2.4) is ~9x faster than the per-tensor loop
    # torch otherwise picks on a CPU: 11 ms instead of 98 ms a step for MiniLM's 22.7M weights.
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=lr)


class _GracefulInterrupt:
    """The first Ctrl-C only sets a flag that the loop checks between steps, so a checkpoint
    always holds whole steps; a second Ctrl-C interrupts at once."""

    def __enter__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: stopping after this step (Ctrl-C again to stop at once)",
              file=sys.stderr)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _rng_state() -> dict:
    state = {"python": random.getstate(),
             "numpy": [torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
                       *np.random.get_state()[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu_copy(model) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train_loop(
    model: torch.nn.Module,
    dataset,
    collate_fn: Callable,
    *,
    batches: Callable[[int], list[list[int]]] | None = None,
    eval_fn: Callable[[torch.nn.Module], dict] | None = None,
    metric: str | None = None,
    greater_is_better: bool = True,
    patience: int | None = None,
    profile: Profile | None = None,
    seed: int = 0,
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    warmup_ratio: float | None = None,
    weight_decay: float = 0.01,
    grad_accum_steps: int = 1,
    max_grad_norm: float | None = 1.0,
    freeze_embeddings: bool = False,
    output_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    eval_every: int | None = None,
    log_every: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
    desc: str = "training",
) -> TrainResult:
    """Train `model` on `dataset` and return a TrainResult.

    dataset: anything with len() and [i]; `collate_fn` turns a list of items into a batch dict
        for `model(**batch)`, whose output must have `.loss`.
    batches: epoch -> list of index lists; it must depend only on the epoch (and a seed you
        chose), so that a resumed run sees the same data order. Default: random batches.
    eval_fn: model -> {name: value}, called at the end of each epoch (and every `eval_every`
        steps); `metric` (default: its first key) drives early stopping (`patience`
        evaluations without improvement) and the best weights, which are restored at the end.
    Sizes default to the profile (batch_size, epochs, learning_rate, warmup_ratio).
    output_dir: checkpoints go to output_dir/checkpoint every `checkpoint_every` steps
        (default: each epoch end), at the end, and when interrupted; `resume=True` continues
        from it exactly (same weights and losses as a run that was never interrupted).
    stop_after: stop after this global step, as if interrupted (checkpoint, completed=False).
    on_step(step, loss): called after every optimizer step.
    Under `torchrun --nproc_per_node N` (or `accelerate launch`) each process takes every N-th
    batch, so one optimizer step sees N x batch_size x grad_accum_steps examples; every
    process evaluates the whole evaluation set, so all of them agree on early stopping.
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    profile = profile or get_profile()
    epochs = profile.epochs if epochs is None else epochs
    batch_size = batch_size or profile.batch_size
    learning_rate = learning_rate or profile.learning_rate
    warmup_ratio = profile.warmup_ratio if warmup_ratio is None else warmup_ratio
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    if batches is None:
        n = len(dataset)
        batches = lambda epoch: random_batches(n, batch_size, seed=seed, epoch=epoch)  # noqa: E731

    accelerator = make_accelerator(profile.bf16)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    set_seed(seed + rank)  # one seed per process, so dropout masks differ across processes

    def epoch_plan(epoch):
        """The optimizer steps of one epoch on this process, as groups of micro-batches."""
        plan = batches(epoch)
        plan = plan[:len(plan) // world * world][rank::world]  # equal share for every process
        return [plan[i:i + grad_accum_steps] for i in range(0, len(plan), grad_accum_steps)]

    steps_per_epoch = len(epoch_plan(0))
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} examples make no full step for {world} processes "
                         f"of batch size {batch_size} x {grad_accum_steps} accumulation steps")
    total_steps = max_steps or steps_per_epoch * epochs
    epochs = math.ceil(total_steps / steps_per_epoch)
    log_every = log_every or max(1, steps_per_epoch // 10)
    # A resumed run must make the same plan, or "exact" would be a lie.
    plan_key = dict(seed=seed, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                    processes=world, grad_accum_steps=grad_accum_steps, examples=len(dataset))

    if freeze_embeddings:
        freeze_word_embeddings(model)
    optimizer = _adamw(_param_groups(model, weight_decay), learning_rate)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(warmup_ratio * total_steps), total_steps)

    ckpt_dir = Path(output_dir) / CHECKPOINT if output_dir else None
    state = dict(step=0, loss_count=0, elapsed=0.0, best_metric=None,
                 best_step=None, evals_since_best=0, stopped_early=False, history=[])
    best_weights = None
    resumed_rng = None
    loss_sum = 0.0  # train losses since the last history row, a tensor once training starts
    if resume and ckpt_dir is not None:
        found = _find_checkpoint(ckpt_dir)
        if found is None:
            if main:
                print(f"no checkpoint in {ckpt_dir}; starting from step 0")
        else:
            saved = torch.load(found / "trainer_state.pt", map_location="cpu",
                               weights_only=True)
            if saved["plan"] != plan_key:
                diff = {k: (saved["plan"].get(k), v) for k, v in plan_key.items()
                        if saved["plan"].get(k) != v}
                raise ValueError(f"the checkpoint in {found} was made with different settings "
                                 f"(checkpoint, now): {diff}; use the same ones or resume=False")
            best_weights, local = _load_checkpoint(
                found, saved, accelerator.unwrap_model(model), optimizer, scheduler, rank)
            state.update(saved["state"])
            loss_sum, resumed_rng = local["loss_sum"], local["rng"]

    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    if resumed_rng is not None:
        _set_rng_state(resumed_rng)  # last, after everything that might draw random numbers

    metric_name = metric
    loss_sum = torch.tensor(loss_sum, dtype=torch.float32, device=accelerator.device)
    pin = accelerator.device.type == "cuda"
    finished = state["step"] >= total_steps or state["stopped_early"]
    completed = True
    last_saved = None
    t0 = time.perf_counter() - state["elapsed"]

    def save():
        nonlocal last_saved
        if ckpt_dir is not None and last_saved != state["step"]:
            state["elapsed"] = time.perf_counter() - t0
            # each process has its own random state (dropout, collators) and loss sum
            local = dict(rng=_rng_state(), loss_sum=float(loss_sum.item()))
            _save_checkpoint(ckpt_dir, accelerator, raw_model, optimizer, scheduler,
                             dict(plan=plan_key, state=state), best_weights, local)
            last_saved = state["step"]

    def log_row():
        if state["loss_count"] == 0:
            return
        mean_loss = accelerator.reduce(loss_sum, "mean").item() / state["loss_count"]
        state["history"].append(dict(
            step=state["step"], epoch=state["step"] / steps_per_epoch, train_loss=mean_loss,
            lr=scheduler.get_last_lr()[0], elapsed_s=time.perf_counter() - t0))
        loss_sum.zero_()
        state["loss_count"] = 0
        bar.set_postfix(loss=f"{mean_loss:.4f}")

    def evaluate_now():
        nonlocal best_weights, metric_name
        model.eval()
        with torch.no_grad(), accelerator.autocast():
            scores = {k: float(v) for k, v in eval_fn(raw_model).items()}
        model.train()
        log_row()
        if not state["history"] or state["history"][-1]["step"] != state["step"]:
            state["history"].append(dict(step=state["step"],
                                         epoch=state["step"] / steps_per_epoch,
                                         lr=scheduler.get_last_lr()[0],
                                         elapsed_s=time.perf_counter() - t0))
        state["history"][-1].update(scores)
        metric_name = metric_name or next(iter(scores))
        if metric_name not in scores:
            raise KeyError(f"metric {metric_name!r} is not among the evaluation results "
                           f"{sorted(scores)}")
        value, best = scores[metric_name], state["best_metric"]
        if best is None or (value > best if greater_is_better else value < best):
            state.update(best_metric=value, best_step=state["step"], evals_since_best=0)
            best_weights = _cpu_copy(raw_model)
        else:
            state["evals_since_best"] += 1
            if patience is not None and state["evals_since_best"] >= patience:
                state["stopped_early"] = True

    bar = tqdm(total=total_steps, initial=state["step"], desc=desc,
               disable=not (progress and main), dynamic_ncols=True)
    model.train()
    safe_to_save = True  # False while a step is half done
    try:
        with _GracefulInterrupt() as interrupt:
            while not finished:
                epoch, first = divmod(state["step"], steps_per_epoch)
                groups = epoch_plan(epoch)
                loader = torch.utils.data.DataLoader(
                    dataset, batch_sampler=[b for g in groups[first:] for b in g],
                    collate_fn=collate_fn, pin_memory=pin,
                    # its own generator: iterating must not draw from the global RNG, whose
                    # state (dropout) a checkpoint restores
                    generator=torch.Generator())
                micro_batches = iter(loader)
                bar.set_description(f"{desc} (epoch {epoch + 1}/{epochs})")
                for group in groups[first:]:
                    safe_to_save = False
                    step_loss = torch.zeros((), device=accelerator.device)
                    for j in range(len(group)):
                        batch = {k: v.to(accelerator.device, non_blocking=pin)
                                 for k, v in next(micro_batches).items()}
                        sync = j == len(group) - 1  # all-reduce gradients once per step only
                        with nullcontext() if sync else accelerator.no_sync(model):
                            output = model(**batch)
                            if getattr(output, "loss", None) is None:
                                raise ValueError("the model returned no loss: does the "
                                                 "collator put labels in the batch?")
                            loss = output.loss / len(group)
                            accelerator.backward(loss)
                        step_loss += loss.detach()
                    if max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    state["step"] += 1
                    loss_sum += step_loss
                    state["loss_count"] += 1
                    bar.update(1)

                    step = state["step"]
                    end_of_epoch = step % steps_per_epoch == 0
                    if step % log_every == 0 or end_of_epoch or step == total_steps:
                        log_row()
                    if eval_fn is not None and (
                            end_of_epoch or step == total_steps
                            or (eval_every and step % eval_every == 0)):
                        evaluate_now()
                    safe_to_save = True
                    if on_step is not None:
                        on_step(step, float(step_loss.item()))
                    finished = step >= total_steps or state["stopped_early"]
                    if (checkpoint_every and step % checkpoint_every == 0) or (
                            not checkpoint_every and end_of_epoch) or finished:
                        save()
                    stop = interrupt.requested
                    if world > 1:  # every process must stop at the same step
                        flag = torch.tensor(float(stop), device=accelerator.device)
                        stop = accelerator.reduce(flag, "sum").item() > 0
                    if stop:
                        save()
                        where = f"; checkpoint in {ckpt_dir}" if ckpt_dir else ""
                        raise KeyboardInterrupt(f"interrupted after step {step}{where}")
                    if stop_after is not None and step >= stop_after and not finished:
                        save()
                        finished, completed = True, False
                    if finished:
                        break
    except KeyboardInterrupt:
        # Saving is collective across processes; a Ctrl-C reaches them all through the flag
        # above, so a bare KeyboardInterrupt on one process of many must not wait for the rest.
        if safe_to_save and world == 1:
            save()
        elif main and ckpt_dir is not None:
            kept = f"step {last_saved}" if last_saved else "the one from before this session"
            print(f"interrupted inside a step; the last checkpoint ({kept}) is kept",
                  file=sys.stderr)
        raise
    finally:
        bar.close()

    if best_weights is not None:
        raw_model.load_state_dict(best_weights)
    # prepare() wrapped forward in bf16 autocast. Without the wrapper the returned model
    # computes like one loaded from disk; `predict` decides the precision for both.
    raw_model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    accelerator.free_memory()
    del model, optimizer, scheduler
    release_memory()  # the optimizer state and the activations are gone: give their memory back
    return TrainResult(
        model=raw_model, history=pd.DataFrame(state["history"]),
        best_metric=state["best_metric"], best_step=state["best_step"], steps=state["step"],
        completed=completed, stopped_early=state["stopped_early"],
        checkpoint=ckpt_dir if ckpt_dir is not None and ckpt_dir.exists() else None,
        info=dict(metric=metric_name, steps_per_epoch=steps_per_epoch, total_steps=total_steps))


# --- checkpoints -----------------------------------------------------------------------------

def _find_checkpoint(ckpt_dir: Path) -> Path | None:
    old = ckpt_dir.with_name(ckpt_dir.name + "-old")
    for path in (ckpt_dir, old):  # "-old" is only left when a swap was cut short
        if (path / "trainer_state.pt").exists():
            return path
    return None


def _save_checkpoint(ckpt_dir, accelerator, model, optimizer, scheduler, trainer, best_weights,
                     local):
    """Write to a temporary directory, then swap it in: a crash never leaves half a
    checkpoint behind, and the previous one survives until the new one is complete."""
    from safetensors.torch import save_file, save_model

    tmp = ckpt_dir.with_name(ckpt_dir.name + "-tmp")
    old = ckpt_dir.with_name(ckpt_dir.name + "-old")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(local, tmp / f"local-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_model(model, str(tmp / "model.safetensors"))
        if best_weights is not None:
            save_file(best_weights, str(tmp / "best.safetensors"))
        torch.save(dict(trainer, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict()), tmp / "trainer_state.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ckpt_dir.exists():
            shutil.rmtree(old, ignore_errors=True)  # older than ckpt_dir, if it is there
            ckpt_dir.rename(old)
        tmp.rename(ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_checkpoint(path: Path, saved: dict, model, optimizer, scheduler, rank: int):
    """Load weights, optimizer and scheduler in place; return (best weights, this process's
    random state and loss sum)."""
    from safetensors.torch import load_file, load_model

    load_model(model, str(path / "model.safetensors"), device=str(next(model.parameters()).device))
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    best = path / "best.safetensors"
    best_weights = load_file(str(best)) if best.exists() else None
    local = torch.load(path / f"local-{rank}.pt", map_location="cpu", weights_only=True)
    return best_weights, local


# --- text classification ---------------------------------------------------------------------

def encode(tokenizer, texts: Sequence[str], labels: Sequence[int] | None = None, *,
           max_length: int) -> list[dict]:
    """Tokenise once, truncated but not padded (padding happens per batch)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] is {type(texts[bad]).__name__}, expected a string")
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    if labels is not None:
        for item, label in zip(features, labels, strict=True):
            item["labels"] = int(label)
    return features


def _collator(tokenizer):
    from transformers import DataCollatorWithPadding

    # multiples of 8 suit GPU tensor cores; on a CPU they would only add padding
    return DataCollatorWithPadding(
        tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None)


def _default_max_length(tokenizer, model) -> int:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", 512)
    return min(tokenizer.model_max_length, limit, 512)


@torch.no_grad()
def _predict_features(model, tokenizer, features, batch_size, bf16=None):
    collate = _collator(tokenizer)
    device = next(model.parameters()).device
    bf16 = get_profile().bf16 if bf16 is None else bf16
    # the chip the model is on decides, as uses_bf16 does for training
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=bool(bf16) and native_bf16(device))
    was_training = model.training
    model.eval()
    # longest first, so batches hold similar lengths; results go back to input order
    order = np.argsort([-len(f["input_ids"]) for f in features], kind="stable")
    probs = None
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate([{k: v for k, v in features[i].items() if k != "labels"}
                             for i in idx])
            with autocast:
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            p = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            if probs is None:
                probs = np.zeros((len(features), p.shape[1]), dtype=np.float32)
            probs[idx] = p
    finally:
        model.train(was_training)
    if probs is None:
        probs = np.zeros((0, model.config.num_labels), dtype=np.float32)
    return probs


def predict(model, tokenizer, texts: Sequence[str], *, batch_size: int = 64,
            max_length: int | None = None, bf16: bool | None = None) -> np.ndarray:
    """Class probabilities, shape (len(texts), num_labels), in the order of `texts`.

    bf16: compute in bf16 autocast where the chip does so natively, as training does (about
    twice as fast on such a CPU); None follows the active profile. A model gives the same
    numbers whether it was just trained or loaded from disk."""
    max_length = max_length or _default_max_length(tokenizer, model)
    return _predict_features(model, tokenizer, encode(tokenizer, texts, max_length=max_length),
                             batch_size, bf16)


def classification_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(labels, predictions)),
            "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0))}


def evaluate(model, tokenizer, dataset, *, batch_size: int = 64,
             max_length: int | None = None, bf16: bool | None = None) -> dict:
    """Accuracy and macro-F1 of `model` on a dataset with `text` and `label` columns."""
    probs = predict(model, tokenizer, dataset["text"], batch_size=batch_size,
                    max_length=max_length, bf16=bf16)
    return classification_metrics(list(dataset["label"]), probs.argmax(axis=1))


def _check_columns(ds, name):
    missing = {"text", "label"} - set(ds.column_names)
    if missing:
        raise ValueError(f"{name} needs columns text and label; missing {sorted(missing)}")


def finetune(model, tokenizer, train_ds, eval_ds=None, *, profile: Profile | None = None,
             seed: int = 0, output_dir: str | Path | None = None, resume: bool = False,
             epochs: int | None = None, batch_size: int | None = None,
             learning_rate: float | None = None, metric: str = "accuracy",
             patience: int | None = None, freeze_embeddings: bool | None = None,
             probe_init: bool = False, frozen_layers: int = 0, **loop_kwargs) -> TrainResult:
    """Fine-tune a sequence classifier on `train_ds` (a datasets.Dataset with text and label).

    Each epoch ends with accuracy and macro-F1 on `eval_ds` (history columns val_accuracy,
    val_macro_f1); `metric` picks the one that chooses the best weights and early stopping.
    Word embeddings are frozen when the profile says so. probe_init: start the head as a linear
    probe of the frozen features (LP-FT; heads with a mean pool only, see helpers.heads.probe_head).
    frozen_layers: also freeze the embeddings and this many lower layers (freeze_lower_layers).
    `recipe_for(name)` gives the course's choice of both per encoder. Other keyword arguments go to
    `train_loop` (max_steps, stop_after, grad_accum_steps, checkpoint_every, on_step, ...).
    `result.info["padding"]` compares the padding of length-grouped and random batches.
    """
    profile = profile or get_profile()
    batch_size = batch_size or profile.batch_size
    max_len = profile.max_seq_len
    _check_columns(train_ds, "train_ds")
    train = encode(tokenizer, train_ds["text"], train_ds["label"], max_length=max_len)
    lengths = [len(f["input_ids"]) for f in train]
    if probe_init:
        _probe_init(model, tokenizer, train_ds, max_len)
    if frozen_layers:
        freeze_lower_layers(model, frozen_layers)

    eval_fn = None
    if eval_ds is not None:
        _check_columns(eval_ds, "eval_ds")
        held_out = encode(tokenizer, eval_ds["text"], max_length=max_len)
        gold = list(eval_ds["label"])

        def eval_fn(m):
            probs = _predict_features(m, tokenizer, held_out, max(batch_size, 64), profile.bf16)
            scores = classification_metrics(gold, probs.argmax(axis=1))
            return {f"val_{k}": v for k, v in scores.items()}

    result = train_loop(
        model, train, _collator(tokenizer),
        batches=lambda epoch: length_grouped_batches(lengths, batch_size, seed=seed, epoch=epoch),
        eval_fn=eval_fn, metric=f"val_{metric}", patience=patience, profile=profile, seed=seed,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        freeze_embeddings=profile.freeze_embeddings if freeze_embeddings is None
        else freeze_embeddings,
        output_dir=output_dir, resume=resume, desc="fine-tuning", **loop_kwargs)
    result.info["padding"] = {
        "length_grouped": padding_fraction(
            length_grouped_batches(lengths, batch_size, seed=seed, epoch=0), lengths),
        "random": padding_fraction(
            random_batches(len(lengths), batch_size, seed=seed, epoch=0), lengths)}
    return result


def _probe_init(model, tokenizer, train_ds, max_length):
    from helpers.domains import mean_pooled_embeddings
    from helpers.heads import MeanPoolForSequenceClassification, probe_head

    if not isinstance(model, MeanPoolForSequenceClassification):
        raise ValueError("probe_init needs a mean-pooling head (load_encoder(..., pooling='mean'))")
    features = mean_pooled_embeddings(model, tokenizer, list(train_ds["text"]),
                                      max_length=max_length, normalize=False)
    probe_head(model, features, train_ds["label"], C=PROBE_C)


# The head of LP-FT: a logistic regression with this C on standardised features (for e5 on the
# English validation split, 0.01 and 0.1 tie and 1.0 is worse).
PROBE_C = 0.1
# How the course fine-tunes an encoder, beyond the profile's sizes. For e5, LP-FT with the lower
# layers frozen keeps the features that carry a classifier to Chinese (notebook 06 compares it with
# full fine-tuning and with frozen features; the README gives the command line's measurements).
RECIPES = {"multilingual-e5-small": {"probe_init": True, "frozen_layers": 9}}


def recipe_for(name: str, profile: Profile) -> dict:
    """`finetune` keyword arguments the course uses for an encoder name: the mini BERT's own rate
    and epochs, e5's feature-preserving LP-FT, nothing (the profile's recipe) otherwise."""
    if name == "mini-bert":
        return profile.mini_bert_finetuning()
    return dict(RECIPES.get(name, {}))


# --- saving a fine-tuned model ---------------------------------------------------------------

def save_finetuned(model, tokenizer, path: str | Path, *, max_seq_len: int,
                   labels: Sequence[str] | None = None, prefix: str = "") -> Path:
    """Model and tokenizer (save_pretrained) plus labels, max_seq_len, the head's pooling and
    the text prefix the model was trained with (e5's "query: "), for `predict`."""
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
    (path / MODEL_INFO).write_text(
        json.dumps({"labels": labels, "max_seq_len": max_seq_len, "prefix": prefix,
                    "pooling": saved_pooling(model.config)}, indent=2), encoding="utf-8")
    return path


def load_finetuned(path: str | Path):
    """(model, tokenizer, info) of a directory written by `save_finetuned`; the model comes back
    with the head it was trained with (helpers.heads)."""
    from transformers import AutoConfig, AutoTokenizer

    from helpers import quiet
    from helpers.heads import head_class, saved_pooling

    path = Path(path)
    if not (path / MODEL_INFO).is_file():
        raise FileNotFoundError(f"{path} is not a fine-tuned model directory (no {MODEL_INFO}); "
                                "make one with `python -m helpers finetune --output DIR`")
    info = json.loads((path / MODEL_INFO).read_text(encoding="utf-8"))
    info.setdefault("prefix", "")  # saved before prefixes were recorded
    model = quiet.from_pretrained(head_class(saved_pooling(AutoConfig.from_pretrained(path))), path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer, info


# --- command line ----------------------------------------------------------------------------

def _split_list(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{what}: give a comma-separated list")
    return items


def finetune_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers finetune",
        description="Fine-tune an encoder for review sentiment; saves a model for `predict`.")
    parser.add_argument("--model", required=True, help="mini-bert, minilm-en, "
                        "multilingual-e5-small, a hub id or a local directory")
    parser.add_argument("--train-langs", default="en",
                        type=lambda v: _split_list(v, "--train-langs"),
                        help="languages to train (and validate) on, e.g. en or en,zh")
    parser.add_argument("--domains", default=None, help="all (default), or e.g. books,hotel",
                        type=lambda v: None if v.strip().lower() == "all"
                        else _split_list(v, "--domains"))
    add_profile_argument(parser)
    parser.add_argument("--output", required=True, type=Path, help="directory for the model")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patience", type=int, default=None,
                        help="stop after this many epochs without a better validation accuracy")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in OUTPUT/training")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    if args.epochs is not None:
        if args.epochs < 1:
            print(f"error: --epochs must be at least 1, got {args.epochs}", file=sys.stderr)
            return 2
        profile = with_overrides(profile, epochs=args.epochs)

    accelerator = make_accelerator(profile.bf16)
    main = accelerator.is_main_process
    if main:
        print(f"processes: {accelerator.num_processes}", flush=True)

    from helpers.data import LABELS, load_reviews
    from helpers.heads import PREFIXES
    from helpers.models import load_encoder

    try:
        train = load_reviews("train", langs=args.train_langs, domains=args.domains)
        val = load_reviews("validation", langs=args.train_langs, domains=args.domains)
        test = load_reviews("test", domains=args.domains)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    train = _cap(train, profile.max_train_examples, args.seed)
    val = _cap(val, profile.max_eval_examples, args.seed)
    domains = ",".join(args.domains) if args.domains else "all"
    prefix = PREFIXES.get(args.model, "")
    if prefix:  # e5 reads every text after its task prefix, in training as in prediction
        train, val, test = (ds.map(lambda row: {"text": prefix + row["text"]})
                            for ds in (train, val, test))
    try:
        model, tokenizer = load_encoder(args.model, num_labels=len(LABELS), seed=args.seed)
    except (OSError, ValueError) as err:  # ModelUnavailableError is an OSError
        print(f"error: {err}", file=sys.stderr)
        return 2
    if main:
        print(f"profile {profile.name}: {len(train)} training and {len(val)} validation "
              f"reviews ({','.join(args.train_langs)}; domains {domains})", flush=True)

    recipe = recipe_for(args.model, profile)
    if args.epochs is not None:
        recipe.pop("epochs", None)  # --epochs wins (it is already in the profile)
    result = finetune(model, tokenizer, train, val, profile=profile, seed=args.seed,
                      output_dir=args.output / "training", resume=args.resume,
                      patience=args.patience, **recipe)
    if not main:
        return 0
    model = result.model
    metrics = {"model": args.model, "profile": profile.name, "seed": args.seed, "recipe": recipe,
               "train_langs": args.train_langs, "domains": domains,
               "train_examples": len(train), "steps": result.steps,
               "best_step": result.best_step, "stopped_early": result.stopped_early,
               "validation": {}, "test": {}}
    for split, ds in (("validation", val), ("test", test)):
        for lang in sorted(set(ds["lang"])):
            part = _cap(ds.filter(lambda x, lang=lang: x["lang"] == lang),
                        profile.max_eval_examples, args.seed)
            scores = evaluate(model, tokenizer, part, max_length=profile.max_seq_len)
            metrics[split][lang] = dict(scores, examples=len(part))
            print(f"{split} accuracy {lang}: {scores['accuracy']:.3f} "
                  f"(macro-F1 {scores['macro_f1']:.3f}, {len(part)} reviews)")
    save_finetuned(model, tokenizer, args.output, max_seq_len=profile.max_seq_len, labels=LABELS,
                   prefix=prefix)
    (args.output / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    print(f"saved the model and metrics.json to {args.output}")
    return 0


def _cap(ds, limit, seed):
    if limit is None or len(ds) <= limit:
        return ds
    return ds.shuffle(seed=seed).select(range(limit))


class _BadLine(Exception):
    pass


def _parse_line(raw: bytes) -> dict:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadLine("not valid UTF-8") from None
    if not line.strip():
        raise _BadLine("empty line, expected a JSON object")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise _BadLine(f"malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise _BadLine(f"expected a JSON object, got {type(record).__name__}")
    if "text" not in record:
        raise _BadLine("no \"text\" field")
    text = record["text"]
    if not isinstance(text, str):
        raise _BadLine(f"\"text\" must be a string, got {type(text).__name__}")
    if not text.strip():
        raise _BadLine("\"text\" is empty")
    return record


def predict_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers predict",
        description="Label each review of a JSON Lines file. Every line needs a \"text\" field; "
                    "other fields are kept, and \"label\" and \"score\" (the probability of "
                    "the last label, positive) are added (an existing \"label\" is replaced).")
    parser.add_argument("--model", required=True, type=Path,
                        help="a directory written by `python -m helpers finetune`")
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                        help="at a bad input line: stop (nothing is written) or skip it")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        print(f"error: --batch-size must be at least 1, got {args.batch_size}", file=sys.stderr)
        return 2
    if not args.input.is_file():
        print(f"error: input file {args.input} does not exist", file=sys.stderr)
        return 2
    try:
        model, tokenizer, info = load_finetuned(args.model)
    except (FileNotFoundError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    labels, max_len, prefix = info["labels"], info["max_seq_len"], info["prefix"]
    if torch.cuda.is_available():
        model.cuda()

    # Write next to the output and rename at the end: a stopped run leaves no partial file.
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".partial")
    chunk = args.batch_size * 16  # lines read at once; sorting by length inside a chunk
    written = skipped = 0

    def flush(records, out):
        probs = predict(model, tokenizer, [prefix + r["text"] for r in records],
                        batch_size=args.batch_size, max_length=max_len)
        for record, p in zip(records, probs):
            record["label"] = labels[int(p.argmax())]
            record["score"] = round(float(p[-1]), 6)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return len(records)

    try:
        with open(args.input, "rb") as src, open(tmp, "w", encoding="utf-8") as out:
            records = []
            for number, raw in enumerate(src, start=1):
                try:
                    records.append(_parse_line(raw))
                except _BadLine as err:
                    print(f"{args.input}:{number}: {err}", file=sys.stderr)
                    if args.on_error == "stop":
                        raise
                    skipped += 1
                    continue
                if len(records) == chunk:
                    written += flush(records, out)
                    records = []
            if records:
                written += flush(records, out)
    except _BadLine:
        tmp.unlink(missing_ok=True)
        print(f"stopped at the first bad line; nothing written to {args.output} "
              "(use --on-error skip to skip bad lines)", file=sys.stderr)
        return 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, args.output)
    if skipped:
        print(f"skipped {skipped} bad line(s)", file=sys.stderr)
    print(f"wrote {written} predictions to {args.output}")
    return 0

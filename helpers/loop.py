"""The one training loop of the course: fine-tuning, pretraining and the benchmark all run on it.

`train_loop(model, dataset, collate_fn, profile=...)` trains any model whose `forward(**batch)`
returns an output with `.loss`; `TrainConfig` lists how (epochs, rates, checkpoints, ...). It is
built from four parts a reader can take one at a time:

- `LoopState`: what a run has done so far (step, losses, best score, history);
- `_Run.step`: one optimizer step over a group of micro-batches (gradient accumulation);
- `_Run.evaluate`: the evaluation function, early stopping and the best weights;
- `save_checkpoint` / `load_checkpoint`: the state on disk, swapped in whole, for exact resume.

Device placement, bf16 autocast and several processes (`accelerate launch`, `torchrun`) come
from Hugging Face Accelerate, through the one Accelerator of the process (`accelerator()`).
"""
from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from helpers import runtime
from helpers.io import latest_complete, scratch_for, swap_in
from helpers.runtime import release_memory, set_seed

CHECKPOINT = "checkpoint"  # the latest checkpoint of a run lives in output_dir/checkpoint


# --- batches: a deterministic function of (seed, epoch) --------------------------------------

def random_batches(n: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """All n indices, shuffled by (seed, epoch), cut into batches (the last may be short)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int,
                           mega_batch: int = 50) -> list[list[int]]:
    """Batches of examples of similar length, so dynamic padding adds few pad tokens.

    Shuffle everything, sort each chunk of `mega_batch * batch_size` examples by length, cut it
    into batches, then shuffle the batches: a fresh random order every epoch, but each batch
    holds neighbours in length.
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


# --- precision and processes --------------------------------------------------------------------

def uses_bf16(bf16: bool) -> bool:
    """Whether a profile that asks for `bf16` trains in bf16 here: only where the chip that
    trains (the GPU when there is one, else the CPU) computes bf16 natively."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return bool(bf16) and runtime.native_bf16(device)


_ACCELERATOR: dict = {}


def accelerator(bf16: bool = False):
    """The process's Accelerator: bf16 autocast when asked for and native (see uses_bf16), and
    cpu=True without a GPU so that `torchrun --nproc_per_node N` on a CPU gives N gloo processes.
    Weights and optimizer stay float32 (mixed precision)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = "bf16" if uses_bf16(bf16) else "no"
    if mixed not in _ACCELERATOR:
        if _ACCELERATOR:  # Accelerate keeps one state per process: a new precision replaces it
            AcceleratorState._reset_state()
            _ACCELERATOR.clear()
        _ACCELERATOR[mixed] = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed)
    return _ACCELERATOR[mixed]


# --- what the optimizer trains -------------------------------------------------------------------

def freeze_word_embeddings(model: torch.nn.Module) -> int:
    """Stop training the word-embedding matrix; returns how many parameters that froze."""
    weight = model.get_input_embeddings().weight
    weight.requires_grad_(False)
    return weight.numel()


def _adamw(model, lr: float, weight_decay: float):
    # No decay on the 1-D parameters (biases, LayerNorm weights): pulling them to 0 only hurts.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    try:  # the fused kernel is several times faster on a CPU than torch's per-tensor loop
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without it
        return torch.optim.AdamW(groups, lr=lr)


# --- the state of a run, and its checkpoint -----------------------------------------------------

@dataclass
class LoopState:
    step: int = 0
    loss_count: int = 0  # steps summed into the loss since the last history row
    elapsed: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    history: list = field(default_factory=list)


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


def find_checkpoint(ckpt_dir: Path) -> Path | None:
    return next((p for p in latest_complete(ckpt_dir) if (p / "trainer_state.pt").exists()), None)


def save_checkpoint(ckpt_dir: Path, acc, model, optimizer, scheduler, trainer: dict,
                    best_weights: dict | None, local: dict) -> None:
    """Write into a scratch folder, then swap it in (helpers.io): a crash never leaves half a
    checkpoint, and the previous one survives until the new one is complete. `local`: this
    process's own state. Every process writes its part; the main process swaps."""
    from safetensors.torch import save_file, save_model

    tmp = scratch_for(ckpt_dir, clear=acc.is_main_process)
    acc.wait_for_everyone()
    torch.save(local, tmp / f"local-{acc.process_index}.pt")
    if acc.is_main_process:
        save_model(model, str(tmp / "model.safetensors"))
        if best_weights is not None:
            save_file(best_weights, str(tmp / "best.safetensors"))
        torch.save(dict(trainer, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict()), tmp / "trainer_state.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        swap_in(tmp, ckpt_dir)
    acc.wait_for_everyone()


def load_checkpoint(path: Path, plan: dict, model, optimizer, scheduler, rank: int):
    """Load weights, optimizer and scheduler in place; return (trainer state, best weights, this
    process's random state and loss sum). Refuses a checkpoint made with another plan."""
    from safetensors.torch import load_file, load_model

    saved = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    if saved["plan"] != plan:
        diff = {k: (saved["plan"].get(k), v) for k, v in plan.items() if saved["plan"].get(k) != v}
        raise ValueError(f"the checkpoint in {path} was made with different settings "
                         f"(checkpoint, now): {diff}; use the same ones or start afresh")
    load_model(model, str(path / "model.safetensors"), device=str(next(model.parameters()).device))
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    best = path / "best.safetensors"
    local = torch.load(path / f"local-{rank}.pt", map_location="cpu", weights_only=True)
    return saved["state"], load_file(str(best)) if best.exists() else None, local


class _GracefulInterrupt:
    """The first Ctrl-C only sets a flag that the loop checks between steps, so a checkpoint
    always holds whole steps; a second Ctrl-C interrupts at once."""

    def __enter__(self):
        self.requested, self._previous = False, None
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


# --- one run ---------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """How train_loop trains, besides the model, the data and the profile. A size left None
    comes from the profile."""
    seed: int = 0
    epochs: int | None = None
    max_steps: int | None = None  # instead of epochs
    batch_size: int | None = None  # per process and micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float | None = None
    warmup_ratio: float | None = None
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    freeze_embeddings: bool = False
    # evaluation: `metric` (default: eval_fn's first key) picks the best weights and stops
    # after `patience` evaluations without improvement; every epoch and every `eval_every` steps
    metric: str | None = None
    greater_is_better: bool = True
    patience: int | None = None
    eval_every: int | None = None
    # checkpoints in output_dir: every `checkpoint_every` steps (else every epoch), at the end
    # and on Ctrl-C; `resume` continues one exactly; `stop_after` stops there as if interrupted
    output_dir: str | Path | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    stop_after: int | None = None
    log_every: int | None = None  # steps per history row (default: a tenth of an epoch)
    progress: bool = True
    desc: str = "training"


@dataclass
class LoopSettings(TrainConfig):
    """A TrainConfig with what it works out to for this data and profile: the batch plan and
    the number of steps (log_every filled in too)."""
    batches: Callable[[int], list[list[int]]] | None = None
    total_steps: int = 0
    steps_per_epoch: int = 1


class _Run:
    """The model, optimizer, schedule and LoopState of one training run, and what it does."""

    def __init__(self, acc, model, optimizer, scheduler, settings: LoopSettings, eval_fn,
                 ckpt_dir: Path | None, plan: dict):
        self.acc, self.settings, self.eval_fn = acc, settings, eval_fn
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.ckpt_dir, self.plan = ckpt_dir, plan
        self.state, self.best_weights, self.last_saved = LoopState(), None, None
        self.first_step = 0  # the step this session starts from: 0, or the resumed checkpoint's
        self.loss_sum = 0.0  # a tensor once training starts
        self.t0 = time.perf_counter()
        self.bar, self.safe_to_save = None, True  # safe_to_save: False while a step is half done

    @property
    def raw_model(self):
        return self.acc.unwrap_model(self.model)

    def restore(self, resume: bool) -> dict | None:
        """Continue from the checkpoint when asked to and there is one; returns its random state."""
        found = find_checkpoint(self.ckpt_dir) if resume and self.ckpt_dir is not None else None
        if found is None:
            if resume and self.ckpt_dir is not None and self.acc.is_main_process:
                print(f"no checkpoint in {self.ckpt_dir}; starting from step 0")
            return None
        state, self.best_weights, local = load_checkpoint(
            found, self.plan, self.acc.unwrap_model(self.model), self.optimizer, self.scheduler,
            self.acc.process_index)
        self.state = LoopState(**state)
        self.first_step = self.state.step
        self.loss_sum, self.t0 = local["loss_sum"], time.perf_counter() - self.state.elapsed
        return local["rng"]

    def save(self) -> None:
        if self.ckpt_dir is None or self.last_saved == self.state.step:
            return
        self.state.elapsed = time.perf_counter() - self.t0
        local = dict(rng=_rng_state(), loss_sum=float(self.loss_sum.item()))
        save_checkpoint(self.ckpt_dir, self.acc, self.raw_model, self.optimizer, self.scheduler,
                        dict(plan=self.plan, state=asdict(self.state)), self.best_weights, local)
        self.last_saved = self.state.step

    def step(self, micro_batches, group_size: int) -> torch.Tensor:
        """One optimizer step over `group_size` micro-batches; returns the step's mean loss."""
        acc, pin = self.acc, self.acc.device.type == "cuda"
        step_loss = torch.zeros((), device=acc.device)
        for j in range(group_size):
            batch = {k: v.to(acc.device, non_blocking=pin) for k, v in next(micro_batches).items()}
            sync = j == group_size - 1  # all-reduce gradients once per step only
            with nullcontext() if sync else acc.no_sync(self.model):
                output = self.model(**batch)
                if getattr(output, "loss", None) is None:
                    raise ValueError("the model returned no loss: does the collator put labels "
                                     "in the batch?")
                loss = output.loss / group_size
                acc.backward(loss)
            step_loss += loss.detach()
        if self.settings.max_grad_norm:
            acc.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.loss_sum += step_loss
        self.state.loss_count += 1
        return step_loss

    def _row(self) -> dict:
        return dict(step=self.state.step, epoch=self.state.step / self.settings.steps_per_epoch,
                    lr=self.scheduler.get_last_lr()[0], elapsed_s=time.perf_counter() - self.t0)

    def log(self) -> float | None:
        """Add the mean training loss since the last row to the history; returns it."""
        if self.state.loss_count == 0:
            return None
        mean = self.acc.reduce(self.loss_sum, "mean").item() / self.state.loss_count
        row = self._row()
        self.state.history.append(dict(step=row.pop("step"), epoch=row.pop("epoch"),
                                       train_loss=mean, **row))
        self.loss_sum.zero_()
        self.state.loss_count = 0
        self.bar.set_postfix(loss=f"{mean:.4f}")
        return mean

    def evaluate(self) -> None:
        """Score the model, keep the best weights, and decide on early stopping."""
        s, state = self.settings, self.state
        self.model.eval()
        with torch.no_grad(), self.acc.autocast():
            scores = {k: float(v) for k, v in self.eval_fn(self.raw_model).items()}
        self.model.train()
        self.log()
        if not state.history or state.history[-1]["step"] != state.step:
            state.history.append(self._row())
        state.history[-1].update(scores)
        s.metric = s.metric or next(iter(scores))
        if s.metric not in scores:
            raise KeyError(f"metric {s.metric!r} is not among the evaluation results {sorted(scores)}")
        value, best = scores[s.metric], state.best_metric
        if best is None or (value > best if s.greater_is_better else value < best):
            state.best_metric, state.best_step, state.evals_since_best = value, state.step, 0
            self.best_weights = {k: v.detach().to("cpu", copy=True)
                                 for k, v in self.raw_model.state_dict().items()}
        else:
            state.evals_since_best += 1
            state.stopped_early = s.patience is not None and state.evals_since_best >= s.patience

    def after_step(self, step_loss, on_step) -> bool:
        """Log, evaluate and checkpoint as planned after a step; returns whether the run is done."""
        s, step = self.settings, self.state.step
        end_of_epoch = step % s.steps_per_epoch == 0
        if step % s.log_every == 0 or end_of_epoch or step == s.total_steps:
            self.log()
        if self.eval_fn is not None and (end_of_epoch or step == s.total_steps
                                         or (s.eval_every and step % s.eval_every == 0)):
            self.evaluate()
        if on_step is not None:
            on_step(step, float(step_loss.item()))
        finished = step >= s.total_steps or self.state.stopped_early
        if (s.checkpoint_every and step % s.checkpoint_every == 0) or (
                not s.checkpoint_every and end_of_epoch) or finished:
            self.save()
        return finished

    def epoch_plan(self, epoch: int) -> list[list[list[int]]]:
        """This process's optimizer steps of one epoch, as groups of micro-batches."""
        world, rank = self.acc.num_processes, self.acc.process_index
        plan = self.settings.batches(epoch)
        plan = plan[:len(plan) // world * world][rank::world]  # an equal share for every process
        k = self.settings.grad_accum_steps
        return [plan[i:i + k] for i in range(0, len(plan), k)]


def _stop_requested(acc, interrupt) -> bool:
    stop = interrupt.requested
    if acc.num_processes > 1:  # every process must stop at the same step
        flag = torch.tensor(float(stop), device=acc.device)
        stop = acc.reduce(flag, "sum").item() > 0
    return stop


def _train(run: _Run, dataset, collate_fn, on_step) -> bool:
    """Step through the epochs until the plan ends; returns False when stopped by stop_after."""
    s = run.settings
    with _GracefulInterrupt() as interrupt:
        while not (run.state.step >= s.total_steps or run.state.stopped_early):
            epoch, first = divmod(run.state.step, s.steps_per_epoch)
            groups = run.epoch_plan(epoch)[first:]
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=[b for g in groups for b in g], collate_fn=collate_fn,
                pin_memory=run.acc.device.type == "cuda",
                generator=torch.Generator())  # not the global one, whose state a checkpoint keeps
            micro_batches = iter(loader)
            run.bar.set_description(
                f"{s.desc} (epoch {epoch + 1}/{math.ceil(s.total_steps / s.steps_per_epoch)})")
            for group in groups:
                run.safe_to_save = False
                loss = run.step(micro_batches, len(group))
                run.bar.update(1)
                finished = run.after_step(loss, on_step)
                run.safe_to_save = True
                if _stop_requested(run.acc, interrupt):
                    run.save()
                    where = f"; checkpoint in {run.ckpt_dir}" if run.ckpt_dir else ""
                    raise KeyboardInterrupt(f"interrupted after step {run.state.step}{where}")
                if s.stop_after is not None and run.state.step >= s.stop_after and not finished:
                    run.save()
                    return False
                if finished:
                    break
    return True


def _settings(dataset, profile, c: TrainConfig, batches, world: int) -> LoopSettings:
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    if c.grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {c.grad_accum_steps}")
    batch_size = c.batch_size or profile.batch_size
    if batches is None:
        n, seed = len(dataset), c.seed
        batches = lambda epoch: random_batches(n, batch_size, seed=seed, epoch=epoch)  # noqa: E731
    per_process = len(batches(0)) // world
    steps_per_epoch = math.ceil(per_process / c.grad_accum_steps)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} examples make no full step for {world} processes "
                         f"of batch size {batch_size} x {c.grad_accum_steps} accumulation steps")
    epochs = profile.epochs if c.epochs is None else c.epochs
    return LoopSettings(**vars(c) | dict(
        batches=batches, total_steps=c.max_steps or steps_per_epoch * epochs,
        steps_per_epoch=steps_per_epoch, log_every=c.log_every or max(1, steps_per_epoch // 10)))


def train_loop(model: torch.nn.Module, dataset, collate_fn: Callable, *, profile,
               config: TrainConfig | None = None, batches=None, eval_fn=None, on_step=None,
               **options) -> TrainResult:
    """Train `model` on `dataset` (anything with len() and [i]) and return a TrainResult.

    collate_fn: items -> a batch for `model(**batch)`. config: how to train (TrainConfig);
    keyword `options` change its fields one by one (`train_loop(..., epochs=3)`). batches:
    epoch -> lists of indices, a function of the epoch only, so a resumed run sees the same
    order. eval_fn: model -> {name: value}. on_step(step, loss): called after every optimizer
    step. Under N processes a step sees N x batch_size x grad_accum_steps examples.
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    c = replace(config or TrainConfig(), **options)
    acc = accelerator(profile.bf16)
    settings = _settings(dataset, profile, c, batches, acc.num_processes)
    set_seed(c.seed + acc.process_index)  # one seed per process: dropout masks differ
    if c.freeze_embeddings:
        freeze_word_embeddings(model)
    optimizer = _adamw(model, c.learning_rate or profile.learning_rate, c.weight_decay)
    warmup = profile.warmup_ratio if c.warmup_ratio is None else c.warmup_ratio
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup * settings.total_steps),
                                                settings.total_steps)
    # A resumed run must make the same plan, or "exact" would be a lie.
    plan = dict(seed=c.seed, total_steps=settings.total_steps, examples=len(dataset),
                steps_per_epoch=settings.steps_per_epoch, processes=acc.num_processes,
                grad_accum_steps=c.grad_accum_steps)
    ckpt_dir = Path(c.output_dir) / CHECKPOINT if c.output_dir else None
    run = _Run(acc, model, optimizer, scheduler, settings, eval_fn, ckpt_dir, plan)
    rng = run.restore(c.resume)
    run.model, run.optimizer = acc.prepare(model, optimizer)
    if rng is not None:
        _set_rng_state(rng)  # last, after everything that might draw random numbers
    run.loss_sum = torch.tensor(run.loss_sum, dtype=torch.float32, device=acc.device)
    run.bar = tqdm(total=settings.total_steps, initial=run.state.step, desc=c.desc,
                   disable=not (c.progress and acc.is_main_process), dynamic_ncols=True)
    run.model.train()
    try:
        completed = _train(run, dataset, collate_fn, on_step)
    except KeyboardInterrupt:
        _save_on_interrupt(run)
        raise
    finally:
        run.bar.close()
    return _result(run, completed)


def _save_on_interrupt(run: _Run) -> None:
    # Saving is collective across processes; a Ctrl-C reaches them all through the stop flag,
    # so a bare KeyboardInterrupt on one process of many must not wait for the rest.
    if run.safe_to_save and run.acc.num_processes == 1:
        run.save()
    elif run.acc.is_main_process and run.ckpt_dir is not None:
        kept = f"step {run.last_saved}" if run.last_saved else "the one from before this session"
        print(f"interrupted inside a step; the last checkpoint ({kept}) is kept", file=sys.stderr)


def _result(run: _Run, completed: bool) -> TrainResult:
    if run.best_weights is not None:
        run.raw_model.load_state_dict(run.best_weights)
    # prepare() wrapped forward in autocast; without the wrapper the model computes like one
    # loaded from disk, and whoever predicts decides the precision for both.
    model = run.acc.unwrap_model(run.model, keep_fp32_wrapper=False)
    run.acc.free_memory()
    state, s = run.state, run.settings
    run.model = run.optimizer = run.scheduler = None
    release_memory()  # the optimizer state and the activations are gone: give their memory back
    return TrainResult(
        model=model, history=pd.DataFrame(state.history), best_metric=state.best_metric,
        best_step=state.best_step, steps=state.step, completed=completed,
        stopped_early=state.stopped_early,
        checkpoint=run.ckpt_dir if run.ckpt_dir is not None and run.ckpt_dir.exists() else None,
        info=dict(metric=s.metric, steps_per_epoch=s.steps_per_epoch, total_steps=s.total_steps,
                  session_steps=state.step - run.first_step))

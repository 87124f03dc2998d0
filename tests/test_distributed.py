"""The course's training loop as two processes on a CPU (torchrun, gloo), as notebook 08 shows.

- An easy problem trained by helpers.training.train_loop in one process and in two reaches the
  same validation accuracy (within noise), and two ranks take part.
- `python -m helpers finetune` under torchrun: two processes train, one of them saves.
"""
import contextlib
import io
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.config import get_profile

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300  # seconds per launch; ~30 s on 2 idle cores, most of it importing torch twice

# Sequences of 12 tokens; a class-0 sequence draws 70% of its tokens from ids 5-19, a class-1
# sequence from ids 20-34, the rest from the other class's ids. Majority voting over 12 tokens
# gets about 90% right, so a model that learns the problem reaches ~0.9 and chance is 0.5.
EASY_PROBLEM = r'''
import json, os, sys
import torch
from transformers import BertConfig, BertForSequenceClassification
from helpers.config import get_profile
from helpers.training import train_loop

torch.set_num_threads(1)  # what torchrun gives each process; the same for one process


def examples(n, seed, length=12, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, (n,), generator=g)
    own = 5 + 15 * labels[:, None] + torch.randint(15, (n, length), generator=g)
    other = 5 + 15 * (1 - labels[:, None]) + torch.randint(15, (n, length), generator=g)
    ids = torch.where(torch.rand(n, length, generator=g) < noise, other, own)
    ids[:, 0] = 2  # a [CLS] of sorts, read by the classifier
    mask = torch.ones(length, dtype=torch.long)
    return [{"input_ids": ids[i], "attention_mask": mask, "labels": labels[i]} for i in range(n)]


def stack(batch):
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


train, val = examples(256, seed=0), stack(examples(200, seed=1))


def eval_fn(model):
    logits = model(input_ids=val["input_ids"], attention_mask=val["attention_mask"]).logits
    return {"val_accuracy": float((logits.argmax(-1) == val["labels"]).float().mean())}


torch.manual_seed(0)
model = BertForSequenceClassification(BertConfig(
    vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=64, max_position_embeddings=32, num_labels=2))
rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
print(f"rank {rank} of {world}", flush=True)
result = train_loop(model, train, stack, eval_fn=eval_fn, profile=get_profile("smoke"),
                    epochs=int(sys.argv[1]), batch_size=16, learning_rate=2e-3, progress=False)
if rank == 0:
    history = result.history
    print("RESULT " + json.dumps({
        "steps": result.steps, "val_accuracy": history.val_accuracy.dropna().tolist(),
        "train_loss": history.train_loss.dropna().tolist()}), flush=True)
'''
EPOCHS = 10


def torchrun(*args):
    """`torchrun --standalone --nproc_per_node 2 ...` (standalone: a free port of its own, so
    parallel test runs do not collide)."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def parse_result(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, f"expected one RESULT line (from rank 0 only):\n{stdout}"
    return json.loads(lines[0][len("RESULT "):])


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("easy") / "easy_problem.py"
    path.write_text(EASY_PROBLEM, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_process(script):
    """The same script in this process, as a plain `python easy_problem.py` would run it."""
    threads = torch.get_num_threads()
    stdout, argv = io.StringIO(), sys.argv
    sys.argv = [str(script), str(EPOCHS)]
    try:
        with contextlib.redirect_stdout(stdout):
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
    return stdout.getvalue()


@pytest.fixture(scope="module")
def two_processes(script):
    return torchrun(script, EPOCHS)


def test_two_ranks_take_part(two_processes):
    lines = set(two_processes.splitlines())
    assert {"rank 0 of 2", "rank 1 of 2"} <= lines


def test_each_process_takes_half_the_batches(one_process, two_processes):
    single, double = parse_result(one_process), parse_result(two_processes)
    assert double["steps"] * 2 == single["steps"] == EPOCHS * 256 // 16


def test_two_processes_learn_as_well_as_one(one_process, two_processes):
    single, double = parse_result(one_process), parse_result(two_processes)
    for run in (single, double):
        losses = run["train_loss"]
        quarter = max(1, len(losses) // 4)
        first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
        assert last < first - 0.1, f"the training loss did not fall: {first:.3f} -> {last:.3f}"
        assert run["val_accuracy"][-1] > 0.8, run["val_accuracy"]  # chance is 0.5
    # 200 validation examples at ~0.9: a standard error of ~0.02 each, so 0.08 is ~3 sigma
    gap = abs(single["val_accuracy"][-1] - double["val_accuracy"][-1])
    assert gap <= 0.08, f"one process {single['val_accuracy'][-1]:.3f}, " \
                        f"two processes {double['val_accuracy'][-1]:.3f}"



def test_finetune_command_on_two_processes(tiny_model_dir, tmp_path):
    from helpers.training import load_finetuned

    out = tmp_path / "out"
    stdout = torchrun("-m", "helpers", "finetune", "--model", tiny_model_dir, "--profile", "smoke",
                      "--output", out, "--epochs", "1")
    lines = stdout.splitlines()
    assert [line for line in lines if line.startswith("processes:")] == ["processes: 2"]
    assert sum("saved the model" in line for line in lines) == 1  # only the main process
    profile = get_profile("smoke")
    metrics = json.loads((out / "metrics.json").read_text())
    # each optimizer step takes one batch from each process
    assert metrics["steps"] == metrics["train_examples"] // (profile.batch_size * 2)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("model.safetensors")) == \
        ["model.safetensors", "training/checkpoint/model.safetensors"]
    checkpoint = out / "training" / "checkpoint"
    # every process keeps its own random state in the checkpoint; one trainer state
    assert sorted(p.name for p in checkpoint.glob("local-*.pt")) == ["local-0.pt", "local-1.pt"]
    state = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=True)
    assert state["plan"]["processes"] == 2
    model, tokenizer, info = load_finetuned(out)
    assert info["labels"] == ["negative", "positive"]

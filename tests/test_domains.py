from collections import Counter

import numpy as np
import pytest
import torch
from scipy import sparse

from helpers import domains

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "room", "battery", "the", "is"]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]",
                                   unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


@pytest.fixture(scope="module")
def encoder(tokenizer):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                        pad_token_id=0)
    return BertModel(config).eval()


def test_token_counts_count_pieces_without_special_tokens(tokenizer):
    counts = domains.token_counts(tokenizer, ["the room is good", "the battery is bad the"])
    assert counts == Counter({"the": 3, "is": 2, "room": 1, "good": 1, "battery": 1, "bad": 1})
    assert domains.token_counts(tokenizer, []) == Counter()


def test_vocabulary_overlap_is_jaccard():
    a = Counter({"the": 5, "room": 3, "clean": 1})
    b = Counter({"the": 4, "battery": 3, "clean": 2, "dead": 1})
    assert domains.vocabulary_overlap(a, b) == pytest.approx(2 / 5)  # {the, clean} of 5 pieces
    assert domains.vocabulary_overlap(a, a) == 1.0
    assert domains.vocabulary_overlap(a, Counter({"x": 1})) == 0.0
    # top 2: {the, room} and {the, battery}
    assert domains.vocabulary_overlap(a, b, top_k=2) == pytest.approx(1 / 3)


def test_top_k_ties_are_broken_the_same_way_every_time():
    a = Counter({"b": 1, "a": 1, "c": 1})
    assert domains.vocabulary_overlap(a, Counter({"a": 1}), top_k=1) == 1.0
    with pytest.raises(ValueError, match="top_k"):
        domains.vocabulary_overlap(a, a, top_k=0)
    with pytest.raises(ValueError, match="empty"):
        domains.vocabulary_overlap(Counter(), Counter())


def test_pad_is_near_zero_for_one_distribution_and_near_two_for_separable_ones():
    rng = np.random.default_rng(0)
    same = domains.proxy_a_distance(rng.normal(size=(200, 5)), rng.normal(size=(200, 5)))
    assert abs(same["pad"]) < 0.5 and 0.35 < same["error"] < 0.65
    apart = domains.proxy_a_distance(rng.normal(size=(200, 5)), rng.normal(5, 1, size=(200, 5)))
    assert apart["error"] == 0.0 and apart["pad"] == pytest.approx(2.0)
    assert same["pad"] == pytest.approx(2 * (1 - 2 * same["error"]))


def test_pad_balances_the_domains_and_accepts_sparse_features():
    rng = np.random.default_rng(1)
    a = sparse.csr_matrix(rng.random((300, 20)) * (rng.random((300, 20)) < 0.3))
    b = sparse.csr_matrix(rng.random((50, 20)) * (rng.random((50, 20)) < 0.3))
    result = domains.proxy_a_distance(a, b)
    assert result["n"] == 50 and -2.0 <= result["pad"] <= 2.0
    assert domains.proxy_a_distance(a, b, seed=3) == domains.proxy_a_distance(a, b, seed=3)


def test_pad_rejects_bad_input():
    with pytest.raises(ValueError, match="columns"):
        domains.proxy_a_distance(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="at least 5"):
        domains.proxy_a_distance(np.zeros((3, 3)), np.zeros((10, 3)))
    with pytest.raises(TypeError, match="both"):
        domains.proxy_a_distance(np.zeros((10, 3)), sparse.csr_matrix(np.zeros((10, 3))))


def test_mean_pooling_ignores_padding_and_keeps_the_order(encoder, tokenizer):
    texts = ["the battery is bad the battery is bad", "good", "the room is good"]
    together = domains.mean_pooled_embeddings(encoder, tokenizer, texts, batch_size=3,
                                              normalize=False)
    for i, text in enumerate(texts):
        alone = domains.mean_pooled_embeddings(encoder, tokenizer, [text], normalize=False)
        np.testing.assert_allclose(together[i], alone[0], atol=1e-5)
    # the same thing by hand: mean over all tokens of one unpadded text
    batch = tokenizer([texts[2]], return_tensors="pt")
    with torch.no_grad():
        by_hand = encoder(**batch).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(together[2], by_hand, atol=1e-5)
    unit = domains.mean_pooled_embeddings(encoder, tokenizer, texts, prefix="good ")
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)


def test_mean_pooling_uses_the_encoder_under_a_head(encoder, tokenizer):
    from transformers import BertForSequenceClassification

    classifier = BertForSequenceClassification(encoder.config)
    classifier.bert.load_state_dict(encoder.state_dict(), strict=False)
    texts = ["good", "bad room"]
    np.testing.assert_allclose(domains.mean_pooled_embeddings(classifier, tokenizer, texts),
                               domains.mean_pooled_embeddings(encoder, tokenizer, texts), atol=1e-5)


def test_shift_drop_is_the_accuracy_difference_with_a_paired_interval():
    from sklearn.metrics import accuracy_score

    from helpers.metrics import paired_bootstrap

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.9, y, 1 - y)
    poor = np.where(rng.random(400) < 0.7, y, 1 - y)
    result = domains.shift_drop(y, good, poor, seed=3)
    assert result["in_domain"] == pytest.approx(accuracy_score(y, good))
    assert result["shifted"] == pytest.approx(accuracy_score(y, poor))
    assert result["drop"] == pytest.approx(accuracy_score(y, good) - accuracy_score(y, poor))
    assert result["n"] == 400
    # the same paired resampling as helpers.metrics, which it must agree with closely
    reference = paired_bootstrap(y, good, poor, n_boot=20000, seed=0)
    assert result["low"] == pytest.approx(reference["low"], abs=0.01)
    assert result["high"] == pytest.approx(reference["high"], abs=0.01)
    assert 0 < result["low"] < result["drop"] < result["high"]
    # identical predictions: no drop and no spread
    same = domains.shift_drop(y, good, good)
    assert same["drop"] == same["low"] == same["high"] == 0.0


def test_shift_drop_averages_runs_per_item():
    y = np.array([0, 1, 1, 0])
    runs = np.array([[0, 1, 1, 0], [1, 1, 0, 0]])  # accuracy 1.0 and 0.5
    result = domains.shift_drop(y, runs, np.array([1, 0, 0, 1]))
    assert result["in_domain"] == pytest.approx(0.75)
    assert result["shifted"] == 0.0 and result["drop"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="do not match"):
        domains.shift_drop(y, y[:3], y)


def test_drop_difference_compares_two_models_on_the_same_items():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)

    def noisy(p):
        return np.where(rng.random(500) < p, y, 1 - y)

    in_a, shifted_a, in_b, shifted_b = noisy(0.9), noisy(0.6), noisy(0.9), noisy(0.88)
    result = domains.drop_difference(y, in_a, shifted_a, in_b, shifted_b)
    drop_a = np.mean(in_a == y) - np.mean(shifted_a == y)
    drop_b = np.mean(in_b == y) - np.mean(shifted_b == y)
    assert result["difference"] == pytest.approx(drop_a - drop_b)
    assert result["low"] > 0 and result["low"] < result["difference"] < result["high"]
    # a model against itself: exactly zero
    zero = domains.drop_difference(y, in_a, shifted_a, in_a, shifted_a)
    assert zero["difference"] == zero["low"] == zero["high"] == 0.0


def test_correlation_interval_matches_scipy_and_covers_the_truth():
    from scipy import stats

    rng = np.random.default_rng(4)
    x = rng.normal(size=60)
    y = 0.6 * x + 0.8 * rng.normal(size=60)  # true correlation 0.6
    result = domains.correlation_interval(x, y)
    assert result["r"] == pytest.approx(stats.pearsonr(x, y)[0])
    assert result["low"] < 0.6 < result["high"] and result["n"] == 60
    rho = domains.correlation_interval(x, y, method="spearman")
    assert rho["r"] == pytest.approx(stats.spearmanr(x, y)[0])
    # unrelated points: the interval straddles zero
    unrelated = domains.correlation_interval(x, rng.normal(size=60))
    assert unrelated["low"] < 0 < unrelated["high"]
    assert domains.correlation_interval([1, 2, 3], [5, 5, 5])["r"] is None
    with pytest.raises(ValueError, match="method"):
        domains.correlation_interval(x, y, method="kendall")
    with pytest.raises(ValueError, match="same length"):
        domains.correlation_interval(x, y[:-1])

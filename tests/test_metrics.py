import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from helpers import metrics


def test_summary_equals_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.where(rng.random(300) < 0.8, y, 1 - y)
    s = metrics.classification_summary(y, p)
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert s["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert s["precision"]["positive"] == pytest.approx(skm.precision_score(y, p), abs=1e-6)
    assert s["recall"]["negative"] == pytest.approx(skm.recall_score(y, p, pos_label=0), abs=1e-6)
    assert s["f1"]["negative"] == pytest.approx(skm.f1_score(y, p, pos_label=0), abs=1e-6)
    assert np.mean(list(s["f1"].values())) == pytest.approx(s["macro_f1"], abs=1e-6)
    assert s["confusion_matrix"] == skm.confusion_matrix(y, p).tolist()


def test_summary_of_a_majority_baseline_on_an_unbalanced_set():
    """Always answering the majority class: high accuracy, no recall for the minority class."""
    y = np.array([1] * 90 + [0] * 10)
    s = metrics.classification_summary(y, np.ones_like(y))
    assert s["accuracy"] == pytest.approx(0.9)
    assert s["recall"] == {"negative": 0.0, "positive": 1.0} and s["f1"]["negative"] == 0.0
    assert s["macro_f1"] == pytest.approx(0.5 * 2 * 0.9 / 1.9, abs=1e-6)
    assert s["confusion_matrix"] == [[0, 10], [0, 90]]


def test_bootstrap_interval_covers_true_accuracy_about_95_percent():
    """Simulate many test sets from a model whose true accuracy is known."""
    rng = np.random.default_rng(1)
    true_accuracy, n_items, trials = 0.85, 200, 1000
    covered = 0
    for trial in range(trials):
        y = rng.integers(0, 2, n_items)
        pred = np.where(rng.random(n_items) < true_accuracy, y, 1 - y)
        _, low, high = metrics.bootstrap_ci(y, pred, n_boot=1000, seed=trial)
        covered += low <= true_accuracy <= high
    coverage = covered / trials
    print(f"coverage of the 95% bootstrap interval: {coverage:.3f}")
    assert 0.93 <= coverage <= 0.97


def test_bootstrap_with_a_custom_metric_matches_point():
    y = np.array([0, 1, 1, 0, 1, 1, 0, 0])
    p = np.array([0, 1, 0, 0, 1, 1, 1, 0])
    point, low, high = metrics.bootstrap_ci(y, p, metric=lambda a, b: skm.f1_score(a, b), n_boot=200)
    assert point == pytest.approx(skm.f1_score(y, p)) and low <= point <= high


def test_mcnemar_textbook_values():
    # chi-square with continuity correction: (|6 - 16| - 1)^2 / 22 = 81 / 22
    result = metrics.mcnemar_from_counts(6, 16, exact=False)
    assert result["statistic"] == pytest.approx(81 / 22)
    assert result["p_value"] == pytest.approx(0.05501, abs=1e-4)
    # the exact test is a two-sided binomial test on min(b, c) of b + c at p = 1/2
    exact = metrics.mcnemar_from_counts(2, 10)
    assert exact["method"] == "exact binomial"
    assert exact["p_value"] == pytest.approx(2 * stats.binom.cdf(2, 12, 0.5))
    assert metrics.mcnemar_from_counts(0, 0)["p_value"] == 1.0


def test_mcnemar_counts_discordant_items():
    y = np.array([1, 1, 1, 1, 0, 0])
    a = np.array([1, 1, 0, 1, 0, 1])
    b = np.array([1, 0, 0, 0, 1, 1])
    result = metrics.mcnemar(y, a, b)
    assert (result["b"], result["c"]) == (3, 0)  # items 1, 3, 4: A right, B wrong


def test_paired_bootstrap_sees_a_real_difference_and_not_a_fake_one():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 1000)
    good = np.where(rng.random(1000) < 0.9, y, 1 - y)
    bad = np.where(rng.random(1000) < 0.8, y, 1 - y)
    assert metrics.paired_bootstrap(y, good, bad)["p_value"] < 0.01
    same = metrics.paired_bootstrap(y, good, good.copy())
    assert same["difference"] == 0 and same["p_value"] == 1.0


def _synthetic(confidence_gap: float, n: int = 20000, seed: int = 3):
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.55, 0.99, n)
    y = rng.integers(0, 2, n)
    right = rng.random(n) < np.clip(confidence - confidence_gap, 0, 1)
    pred = np.where(right, y, 1 - y)
    probs = np.zeros((n, 2))
    probs[np.arange(n), pred] = confidence
    probs[np.arange(n), 1 - pred] = 1 - confidence
    return probs, y


def test_ece_near_zero_when_calibrated_and_clearly_above_when_overconfident():
    calibrated = metrics.expected_calibration_error(*_synthetic(0.0))
    overconfident = metrics.expected_calibration_error(*_synthetic(0.15))
    print(f"ECE calibrated {calibrated:.4f}, overconfident {overconfident:.4f}")
    assert calibrated < 0.015
    assert overconfident > 0.12


def test_temperature_scaling_recovers_the_temperature_and_lowers_ece():
    rng = np.random.default_rng(4)
    true_logits = rng.normal(0, 1.5, size=(5000, 2))
    y = np.array([rng.choice(2, p=p) for p in metrics.softmax(true_logits)])
    overconfident = true_logits * 3.0
    t = metrics.fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.1)
    before = metrics.expected_calibration_error(metrics.softmax(overconfident), y)
    after = metrics.expected_calibration_error(metrics.softmax(overconfident, t), y)
    assert after < before / 2


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        metrics.bootstrap_ci([1, 0], [1])
    with pytest.raises(ValueError):
        metrics.reliability_table(np.ones(3), [1, 0, 1])

"""Evaluation the way a careful reviewer checks it.

scikit-learn gives the point metrics; what it lacks is here: bootstrap confidence intervals,
a paired comparison of two models on the same items (paired bootstrap and McNemar's test),
expected calibration error, and temperature scaling.
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def classification_summary(y_true, y_pred, labels=("negative", "positive")) -> dict:
    """Accuracy, macro-F1, per-class precision, recall and F1, and the confusion matrix (rows: true
    class, columns: predicted); class i of y_true and y_pred is named labels[i] (the course's
    helpers.data.LABELS by default)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    ids = list(range(len(labels)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1.mean()),  # the unweighted mean over the classes
        "precision": dict(zip(labels, precision.round(6).tolist())),
        "recall": dict(zip(labels, recall.round(6).tolist())),
        "f1": dict(zip(labels, f1.round(6).tolist())),
        "support": dict(zip(labels, support.tolist())),
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "n": int(len(y_true)),
    }


def _boot_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(y_true, y_pred, metric=None, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(point estimate, low, high): a percentile bootstrap interval over the test items.

    `metric(y_true, y_pred)` defaults to accuracy, which is computed for all resamples at once.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ValueError(f"need two equally long, non-empty label arrays, got {len(y_true)} and {len(y_pred)}")
    idx = _boot_indices(len(y_true), n_boot, seed)
    if metric is None:
        correct = (y_true == y_pred).astype(float)
        point, samples = correct.mean(), correct[idx].mean(axis=1)
    else:
        point = metric(y_true, y_pred)
        samples = np.array([metric(y_true[i], y_pred[i]) for i in idx])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(point), float(low), float(high)


def bootstrap_mean(values, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-item `values` and its percentile bootstrap interval."""
    values = np.asarray(values, dtype=float)
    samples = values[_boot_indices(len(values), n_boot, seed)].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def paired_bootstrap(y_true, pred_a, pred_b, n_boot: int = 5000, level: float = 0.95,
                     seed: int = 0) -> dict:
    """Is A more accurate than B on these items? Resample items, keep the pairing.

    pred_a and pred_b may also be (runs, items) arrays, e.g. one row per seed: each item's
    correctness is then averaged over the runs, so the difference is that of the mean accuracies.
    Returns the accuracy difference A - B, its interval, and a two-sided p-value (twice the
    share of resamples on the other side of zero).
    """
    y_true, a, b = map(np.asarray, (y_true, pred_a, pred_b))
    diff = (np.atleast_2d(a == y_true).mean(axis=0)
            - np.atleast_2d(b == y_true).mean(axis=0))
    samples = diff[_boot_indices(len(diff), n_boot, seed)].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    other_side = np.mean(samples <= 0) if diff.mean() > 0 else np.mean(samples >= 0)
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high),
            "p_value": float(min(1.0, 2 * other_side))}


def mcnemar(y_true, pred_a, pred_b, exact: bool | None = None) -> dict:
    """McNemar's test on the items where exactly one of the two models is right.

    b = A right and B wrong, c = A wrong and B right. With few discordant items (b + c < 25,
    or exact=True) the exact binomial test; otherwise chi-square with continuity correction,
    (|b - c| - 1)^2 / (b + c), on one degree of freedom.
    """
    y_true, a, b_pred = map(np.asarray, (y_true, pred_a, pred_b))
    right_a, right_b = a == y_true, b_pred == y_true
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    return mcnemar_from_counts(b, c, exact)


def mcnemar_from_counts(b: int, c: int, exact: bool | None = None) -> dict:
    from scipy import stats

    n = b + c
    if n == 0:
        return {"b": b, "c": c, "statistic": 0.0, "p_value": 1.0, "method": "no discordant items"}
    if exact or (exact is None and n < 25):
        p = stats.binomtest(min(b, c), n, 0.5).pvalue
        return {"b": b, "c": c, "statistic": float(min(b, c)), "p_value": float(p), "method": "exact binomial"}
    statistic = (abs(b - c) - 1) ** 2 / n
    return {"b": b, "c": c, "statistic": float(statistic), "p_value": float(stats.chi2.sf(statistic, 1)),
            "method": "chi-square with continuity correction"}


def reliability_table(probs, y_true, n_bins: int = 10):
    """Per confidence bin: how many items, mean confidence, accuracy (for reliability diagrams)."""
    import pandas as pd

    probs, y_true = np.asarray(probs, dtype=float), np.asarray(y_true)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError("probs must be (n, classes) and match y_true in length")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    rows = [{"bin": k, "low": edges[k], "high": edges[k + 1], "count": int(np.sum(bins == k)),
             "confidence": float(confidence[bins == k].mean()) if np.any(bins == k) else np.nan,
             "accuracy": float(correct[bins == k].mean()) if np.any(bins == k) else np.nan}
            for k in range(n_bins)]
    return pd.DataFrame(rows)


def expected_calibration_error(probs, y_true, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over equal-width bins."""
    table = reliability_table(probs, y_true, n_bins).dropna()
    return float(np.sum(table["count"] * (table["confidence"] - table["accuracy"]).abs()) / table["count"].sum())


def fit_temperature(logits, y_true, max_iter: int = 200) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of softmax(logits / T).

    Fit it on a validation split, never on the test items it will be judged on.
    """
    import torch

    # copies: pandas and datasets hand out read-only arrays, which torch warns about
    logits = torch.tensor(np.array(logits, dtype=np.float64))
    labels = torch.tensor(np.array(y_true, dtype=np.int64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays > 0
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=float) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)

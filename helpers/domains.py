"""How far apart two domains are, measured before any model is fine-tuned on them (notebook 05).

- `token_counts` and `vocabulary_overlap`: the Jaccard index of the token pieces two domains
  use, counted with a model's own tokenizer, so that Chinese (no spaces between words) works
  the same way as English.
- `proxy_a_distance`: how well a linear classifier tells texts of two domains apart on
  held-out data. An error of 50% (chance) means the domains look alike to it, 0% means any
  text gives its domain away. Ben-David et al. (2007) turn the error into
  PAD = 2 (1 - 2 err), which runs from 0 (alike) to 2 (fully separable).
- `mean_pooled_embeddings`: one vector per text from a frozen encoder, the average of its last
  hidden states over the real tokens (how e5 makes its sentence embeddings).
- `shift_drop` and `drop_difference`: what a shift from a source domain to a target domain
  costs, drop = acc(trained on target) - acc(trained on source), both on the target's test
  items, with a paired bootstrap interval; and whether one model's drop is larger than
  another's on the same items.
- `correlation_interval`: a Pearson or Spearman correlation with a bootstrap interval over the
  points (e.g. domain distance against drop, one point per shift).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np


def token_counts(tokenizer, texts: Iterable[str]) -> Counter:
    """How often each token piece (as a string) occurs in `texts`; special tokens left out."""
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be strings")
    counts: Counter = Counter()
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []:
        counts.update(ids)
    special = set(tokenizer.all_special_ids)
    ids = [i for i in counts if i not in special]
    return Counter(dict(zip(tokenizer.convert_ids_to_tokens(ids), (counts[i] for i in ids))))


def _top(counts: Counter, top_k: int | None) -> set:
    if top_k is None:
        return set(counts)
    if top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    # ties broken by the piece itself, so the same counts always give the same set
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {piece for piece, _ in ranked[:top_k]}


def vocabulary_overlap(counts_a: Counter, counts_b: Counter, top_k: int | None = None) -> float:
    """Jaccard index |A ∩ B| / |A ∪ B| of the pieces two domains use.

    With `top_k`, A and B are each domain's `top_k` most frequent pieces, which compares what
    the domains mostly talk about rather than their long tails. Pieces seen in only one of two
    samples are often just rare, so compare samples of similar size.
    """
    a, b = _top(counts_a, top_k), _top(counts_b, top_k)
    if not a and not b:
        raise ValueError("both token counts are empty: nothing to compare")
    return len(a & b) / len(a | b)


def proxy_a_distance(features_a, features_b, *, folds: int = 5, seed: int = 0,
                     C: float = 1.0) -> dict:
    """How separable two domains are: {"pad", "error", "n"}.

    features_a, features_b: one row per text of each domain (a NumPy array, or a SciPy sparse
    matrix such as TF-IDF), same number of columns. The larger domain is subsampled (seeded) to
    the size of the smaller one, so chance is exactly 50%. A logistic regression is trained
    and tested by stratified k-fold cross-validation: every text is classified by a model that
    never saw it. PAD = 2 (1 - 2 error); it goes below 0 only when the held-out error is worse
    than chance, which is noise.
    """
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    is_sparse = sparse.issparse(features_a)
    if is_sparse != sparse.issparse(features_b):
        raise TypeError("features_a and features_b must both be dense or both be sparse")
    if not is_sparse:
        features_a, features_b = np.asarray(features_a), np.asarray(features_b)
    for name, x in (("features_a", features_a), ("features_b", features_b)):
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D (texts x features), got shape {x.shape}")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features_a has {features_a.shape[1]} columns but features_b has "
                         f"{features_b.shape[1]}: both domains need the same features")
    n = min(features_a.shape[0], features_b.shape[0])
    if n < folds:
        raise ValueError(f"need at least {folds} texts per domain for {folds}-fold "
                         f"cross-validation, got {n}")
    rng = np.random.default_rng(seed)
    rows_a = np.sort(rng.choice(features_a.shape[0], n, replace=False))
    rows_b = np.sort(rng.choice(features_b.shape[0], n, replace=False))
    stack = sparse.vstack if is_sparse else np.vstack
    x = stack([features_a[rows_a], features_b[rows_b]])
    y = np.repeat([0, 1], n)
    # sparse TF-IDF rows are already on one scale; centring them would make them dense
    steps = [] if is_sparse else [StandardScaler()]
    classifier = make_pipeline(*steps, LogisticRegression(C=C, max_iter=2000))
    predicted = cross_val_predict(classifier, x, y,
                                  cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    error = float(np.mean(predicted != y))
    return {"pad": 2.0 * (1.0 - 2.0 * error), "error": error, "n": int(n)}


def mean_pooled_embeddings(model, tokenizer, texts: Sequence[str], *, prefix: str = "",
                           batch_size: int = 64, max_length: int = 512, normalize: bool = True,
                           all_layers: bool = False, progress: bool = False) -> np.ndarray:
    """(len(texts), hidden) array: the mean of the last hidden states over each text's real
    tokens (padding excluded), L2-normalised when `normalize`. With all_layers, an array
    (layers + 1, len(texts), hidden) of every layer's mean: index 0 is the embedding layer
    (before any attention), index L the output of layer L.

    `model` may be a bare encoder or a model with a head (its `base_model` is used). e5 was
    trained with a task prefix: pass prefix="query: " for it.
    """
    import torch

    from helpers.heads import mean_pool
    from helpers.inference import batched_forward, collator, encode

    def pool(encoder, batch):
        out = encoder(**batch, output_hidden_states=all_layers)
        states = out.hidden_states if all_layers else (out.last_hidden_state,)
        pooled = torch.stack([mean_pool(h.float(), batch["attention_mask"]) for h in states], 1)
        return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    features = encode(tokenizer, [prefix + t for t in _texts(texts)], max_length=max_length)
    out = batched_forward(getattr(model, "base_model", model), features, pool,
                          collate=collator(tokenizer), batch_size=batch_size, progress=progress,
                          desc="embedding")
    return out.transpose(1, 0, 2) if all_layers else out[:, 0]


def _texts(texts):
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    return list(texts)


def _correct(y_true, predictions) -> np.ndarray:
    """(runs, items) 0/1 array: is each run right on each item. predictions: (items,) or
    (runs, items), e.g. one row per seed."""
    y_true = np.asarray(y_true)
    predictions = np.atleast_2d(np.asarray(predictions))
    if y_true.ndim != 1 or predictions.shape[1] != len(y_true) or len(y_true) == 0:
        raise ValueError(f"predictions of shape {predictions.shape} do not match {len(y_true)} "
                         "labels: pass (items,) or (runs, items) arrays for a non-empty test set")
    return (predictions == y_true).astype(float)


def _percentile_interval(samples, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def shift_drop(y_true, pred_in_domain, pred_shifted, *, n_boot: int = 2000,
               level: float = 0.95, seed: int = 0) -> dict:
    """What a shift costs on one target test set, with a paired bootstrap interval.

    pred_in_domain: predictions of a model trained on the target domain; pred_shifted: of the
    same kind of model trained on the source domain; both on the same target test items, as
    (items,) or (runs, items) arrays (runs, e.g. seeds, are averaged per item). The drop is
    acc(in-domain) - acc(shifted); the interval resamples the test items and keeps each item's
    two predictions together, so the difficulty of the items cancels out.
    Returns {"in_domain", "shifted", "drop", "low", "high", "n"}.
    """
    from helpers.metrics import paired_bootstrap

    right_in, right_shifted = _correct(y_true, pred_in_domain), _correct(y_true, pred_shifted)
    paired = paired_bootstrap(y_true, pred_in_domain, pred_shifted, n_boot=n_boot, level=level,
                              seed=seed)
    return {"in_domain": float(right_in.mean()), "shifted": float(right_shifted.mean()),
            "drop": paired["difference"], "low": paired["low"], "high": paired["high"],
            "n": right_in.shape[1]}


def drop_difference(y_true, in_a, shifted_a, in_b, shifted_b, *, n_boot: int = 2000,
                    level: float = 0.95, seed: int = 0) -> dict:
    """drop(A) - drop(B) for two models on the same target test items, with a paired bootstrap
    interval (the items are resampled once for all four predictions).

    Each argument after y_true is (items,) or (runs, items) predictions, as in `shift_drop`.
    A positive difference means the shift costs model A more than model B.
    Returns {"difference", "low", "high", "n"}.
    """
    per_item = ((_correct(y_true, in_a).mean(axis=0) - _correct(y_true, shifted_a).mean(axis=0))
                - (_correct(y_true, in_b).mean(axis=0) - _correct(y_true, shifted_b).mean(axis=0)))
    from helpers.metrics import bootstrap_mean

    mean, low, high = bootstrap_mean(per_item, n_boot=n_boot, level=level, seed=seed)
    return {"difference": mean, "low": low, "high": high, "n": int(len(per_item))}


def correlation_interval(x, y, *, method: str = "pearson", n_boot: int = 2000,
                         level: float = 0.95, seed: int = 0) -> dict:
    """A correlation coefficient and its percentile bootstrap interval over the points.

    method: "pearson" or "spearman". Resamples that leave x or y constant (r undefined) are
    skipped. Returns {"r", "low", "high", "n"}; r, low and high are None when x or y is
    constant. The points are treated as independent, which shifts that share a domain are not:
    the interval is then too narrow, never too wide.
    """
    from scipy import stats

    functions = {"pearson": stats.pearsonr, "spearman": stats.spearmanr}
    if method not in functions:
        raise ValueError(f"unknown method {method!r}; use one of {sorted(functions)}")
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError(f"need two 1-D arrays of the same length, at least 3 points; got shapes "
                         f"{x.shape} and {y.shape}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"r": None, "low": None, "high": None, "n": int(len(x))}
    coefficient = functions[method]
    rows = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    samples = [float(coefficient(x[i], y[i])[0]) for i in rows
               if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0]
    low, high = _percentile_interval(samples, level)
    return {"r": float(coefficient(x, y)[0]), "low": low, "high": high, "n": int(len(x))}


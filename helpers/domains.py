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

"""Which classification head each encoder gets, and the mean-pooling head itself.

BERT's own classifier (`BertForSequenceClassification`) reads the [CLS] vector through a
"pooler" layer that next-sentence prediction trains. Sentence encoders such as
multilingual-e5-small and all-MiniLM-L6-v2 were trained differently: their contrastive loss
compares the *mean* of the token vectors, so that mean is where their knowledge sits, and e5
ships no pooler at all. They get `MeanPoolForSequenceClassification`, a head on that mean.

The class lives here (no remote code): a saved model records its class in config.json
("architectures"), and `head_class` maps that name back to the class on load.
"""
from __future__ import annotations

import torch
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

# Registry names whose encoders were trained to be read by their mean token vector.
MEAN_POOLED = {"multilingual-e5-small", "minilm-en", "intfloat/multilingual-e5-small"}
# Text that an encoder expects in front of every input (e5 was trained with it).
PREFIXES = {"multilingual-e5-small": "query: ", "intfloat/multilingual-e5-small": "query: "}


def mean_pool(hidden, attention_mask):
    """Average of the token vectors of each sequence, padding left out: (batch, seq, d) ->
    (batch, d)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


class MeanPoolForSequenceClassification(BertPreTrainedModel):
    """BERT encoder -> mean of the token vectors (padding left out) -> dropout -> linear layer.

    Loads from any BERT checkpoint (the encoder's weights are under `bert.`; a pooler or
    pretraining heads in the checkpoint are dropped) and saves and loads like any transformers
    model. forward(**batch) returns .logits, .loss with labels, .hidden_states on request.
    """

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout
        self.dropout = torch.nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=None, output_attentions=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                        token_type_ids=token_type_ids, output_hidden_states=output_hidden_states,
                        output_attentions=output_attentions)
        pooled = mean_pool(out.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)


def pooling_of(name: str) -> str:
    """"mean" for the encoders trained for mean pooling, else "cls" (BERT's pooler)."""
    return "mean" if name in MEAN_POOLED else "cls"


def head_class(pooling: str):
    """The sequence-classification class for a pooling ("cls" or "mean")."""
    from transformers import AutoModelForSequenceClassification

    classes = {"cls": AutoModelForSequenceClassification, "mean": MeanPoolForSequenceClassification}
    if pooling not in classes:
        raise ValueError(f"unknown pooling {pooling!r}; use one of {sorted(classes)}")
    return classes[pooling]


def saved_pooling(config) -> str:
    """The pooling a saved classifier was built with, read from its config.json."""
    names = getattr(config, "architectures", None) or []
    return "mean" if MeanPoolForSequenceClassification.__name__ in names else "cls"


def fit_probe(x_train, y_train, x_val=None, y_val=None, *, cs=(1.0,), scale: bool = True):
    """A linear probe: a logistic regression on frozen features, standardised first when `scale`
    (dense features; not sparse tf-idf rows). One fit per C in `cs`, the best on the validation
    features chosen (the first on ties; no validation set: the first C). Returns (C, pipeline)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fits = {c: make_pipeline(*([StandardScaler()] if scale else []),
                             LogisticRegression(C=c, max_iter=5000)).fit(x_train, y_train)
            for c in cs}
    best = cs[0] if x_val is None else max(cs, key=lambda c: fits[c].score(x_val, y_val))
    return best, fits[best]


def probe_head(model, features, labels, *, C: float = 1.0) -> float:
    """Set `model.classifier` to a linear probe (fit_probe) of frozen `features` (one row per
    training text, as the head will see them: the mean-pooled last layer), and return its
    training accuracy. Fine-tuning from this head instead of a random one is LP-FT ("linear
    probe, then fine-tune"): the encoder's first updates follow a head that already reads its
    features, instead of the gradients of a random head that distort them.
    """
    import numpy as np

    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    _, fit = fit_probe(features, labels, cs=(C,))
    scaler, logistic = fit.named_steps["standardscaler"], fit.named_steps["logisticregression"]
    # fold the scaler into the linear layer: w . (x - mu) / sigma + b = (w / sigma) . x + b'
    weight = logistic.coef_ / scaler.scale_
    bias = logistic.intercept_ - weight @ scaler.mean_
    if weight.shape[0] == 1:  # binary: scikit-learn keeps one row, for class 1 against class 0
        weight = np.vstack([-weight / 2, weight / 2])
        bias = np.array([-bias[0] / 2, bias[0] / 2])
    layer = model.classifier
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype))
    return float(fit.score(features, labels))


def probe_accuracy(model, tokenizer, train, validation, test, *, prefix: str = "",
                   max_length: int = 128, cs=(0.01, 0.1, 1.0)) -> dict:
    """How much of the label frozen features already carry: each text becomes the mean of the
    encoder's last-layer token vectors (the encoder does not train), and `fit_probe` learns the
    label, its C picked on `validation`. train/validation/test: datasets with text and label.
    Returns {"C", "val", "test"} accuracies."""
    from helpers.domains import mean_pooled_embeddings

    x = [mean_pooled_embeddings(model, tokenizer, list(ds["text"]), prefix=prefix,
                                max_length=max_length, normalize=False)
         for ds in (train, validation, test)]
    best, fit = fit_probe(x[0], train["label"], x[1], validation["label"], cs=cs)
    return {"C": best, "val": float(fit.score(x[1], validation["label"])),
            "test": float(fit.score(x[2], test["label"]))}

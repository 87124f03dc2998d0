"""Attention from first principles: the pieces of a BERT encoder layer, small enough to read.

Notebook 01 derives each piece in the open and checks it against PyTorch and transformers;
the tests in tests/test_attention.py do the same over many shapes, dtypes and masks.

Mask convention everywhere in this module (the same as torch's boolean `attn_mask`):
a boolean tensor, broadcastable to (..., seq_q, seq_k), where True means "this query may
attend to this key". Note that torch.nn.MultiheadAttention's `key_padding_mask` uses the
opposite convention (True = ignore); `padding_mask` turns a tokenizer's attention_mask
(1 = real token, 0 = padding) into ours.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "scaled_dot_product_attention",
    "padding_mask",
    "MultiHeadAttention",
    "sinusoidal_positions",
    "position_shift_matrix",
    "BertLayerFromScratch",
]


def _check_mask(mask: torch.Tensor, scores_shape: torch.Size) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != scores_shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the attention "
                         f"scores' shape {tuple(scores_shape)} (..., seq_q, seq_k)")


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None):
    """softmax(q kᵀ / √d_k) v, returning (output, weights).

    q is (..., seq_q, d_k), k is (..., seq_k, d_k), v is (..., seq_k, d_v); the leading
    dimensions broadcast. `mask` is boolean, broadcastable to (..., seq_q, seq_k), True = may
    attend. Output is (..., seq_q, d_v) and weights (..., seq_q, seq_k); every weight row sums
    to 1, except a row whose query may attend to no key at all: there the weights and the
    output are all zeros (a plain softmax over only -inf would give NaN; torch's
    F.scaled_dot_product_attention also returns zeros there).
    """
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError("q, k and v must have at least 2 dimensions (..., seq, d); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.size(-1) != k.size(-1):
        raise ValueError(f"q and k must have the same last dimension d_k; got q {tuple(q.shape)} "
                         f"and k {tuple(k.shape)}")
    if k.size(-2) != v.size(-2):
        raise ValueError(f"k and v must have the same number of positions (dimension -2); got "
                         f"k {tuple(k.shape)} and v {tuple(v.shape)}")
    # The scale keeps the scores' variance near 1 whatever d_k is (notebook 01 measures why).
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is None:
        weights = torch.softmax(scores, dim=-1)
    else:
        _check_mask(mask, scores.shape)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        # Rows with no allowed key are NaN after the softmax: make them "attend to nothing".
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return weights @ v, weights


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """A tokenizer's attention_mask (batch, seq_k), 1 = token and 0 = padding, as a boolean
    mask of shape (batch, 1, 1, seq_k) that broadcasts over heads and queries."""
    if attention_mask.dim() != 2:
        raise ValueError("attention_mask must be (batch, seq) with 1 for tokens and 0 for padding; "
                         f"got shape {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Multi-head attention on batch-first tensors, with the parameter layout of BERT.

    Four nn.Linear layers with bias (q_proj, k_proj, v_proj, out_proj, each d_model → d_model):
    4·d² + 4·d parameters. Each head attends in its own d_model/num_heads-dimensional slice of
    the projected queries, keys and values. No dropout: this module is for reading and
    checking, not for training.
    """

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        if d_model <= 0 or num_heads <= 0:
            raise ValueError(f"d_model and num_heads must be positive; got {d_model} and {num_heads}")
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads}): "
                             "each head gets d_model / num_heads dimensions")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        # (batch, seq, d_model) -> (batch, heads, seq, head_dim): heads become a batch dimension
        return x.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None):
        """query (batch, seq_q, d_model), key and value (batch, seq_k, d_model); `mask` boolean,
        broadcastable to (batch, heads, seq_q, seq_k), True = may attend (see padding_mask).
        Returns output (batch, seq_q, d_model) and weights (batch, heads, seq_q, seq_k)."""
        for name, x in (("query", query), ("key", key), ("value", value)):
            if x.dim() != 3 or x.size(-1) != self.d_model:
                raise ValueError(f"{name} must be (batch, seq, d_model={self.d_model}); "
                                 f"got shape {tuple(x.shape)}")
        if not (query.size(0) == key.size(0) == value.size(0)):
            raise ValueError("query, key and value must have the same batch size; got "
                             f"{query.size(0)}, {key.size(0)}, {value.size(0)}")
        if key.size(1) != value.size(1):
            raise ValueError(f"key and value must have the same length; got {key.size(1)} "
                             f"and {value.size(1)}")
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        heads, weights = scaled_dot_product_attention(q, k, v, mask)
        batch, _, seq_q, _ = heads.shape
        # Put the heads side by side again, then let out_proj mix them.
        merged = heads.transpose(1, 2).reshape(batch, seq_q, self.d_model)
        return self.out_proj(merged), weights

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> "MultiHeadAttention":
        """A copy of torch.nn.MultiheadAttention's weights (which stacks q, k, v into one
        in_proj_weight of shape (3·d, d)) in this module's layout."""
        if mha.in_proj_weight is None or mha.in_proj_bias is None or mha.bias_k is not None:
            raise ValueError("only nn.MultiheadAttention with equal q/k/v sizes, bias=True and "
                             "add_bias_kv=False can be copied")
        ours = cls(mha.embed_dim, mha.num_heads)
        weights = mha.in_proj_weight.detach().chunk(3, dim=0)
        biases = mha.in_proj_bias.detach().chunk(3, dim=0)
        with torch.no_grad():
            for proj, w, b in zip((ours.q_proj, ours.k_proj, ours.v_proj), weights, biases):
                proj.weight.copy_(w)
                proj.bias.copy_(b)
            ours.out_proj.weight.copy_(mha.out_proj.weight)
            ours.out_proj.bias.copy_(mha.out_proj.bias)
        return ours.to(mha.in_proj_weight.dtype)


def sinusoidal_positions(num_positions: int, d_model: int) -> torch.Tensor:
    """The sinusoidal position encodings of "Attention Is All You Need", (num_positions, d_model):
    PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)).

    Column j uses frequency index i = j // 2, so an odd d_model simply has no cosine partner
    for its last sine column (the last cos is dropped); every column still follows the formula.
    """
    if num_positions < 0 or d_model <= 0:
        raise ValueError(f"num_positions must be >= 0 and d_model > 0; got {num_positions}, {d_model}")
    # float64 so that large positions keep their precision; returned as float32 like embeddings
    positions = torch.arange(num_positions, dtype=torch.float64)[:, None]
    two_i = 2 * (torch.arange(d_model) // 2).to(torch.float64)
    angles = positions / 10000 ** (two_i / d_model)
    pe = torch.where(torch.arange(d_model) % 2 == 0, torch.sin(angles), torch.cos(angles))
    return pe.to(torch.float32)


def position_shift_matrix(offset: int, d_model: int) -> torch.Tensor:
    """The (d_model, d_model) matrix M with PE[p + offset] = M @ PE[p] for every p.

    Block-diagonal: one 2×2 rotation by offset·ω_i per (sin, cos) pair, independent of p —
    which is why a linear layer can read relative offsets off sinusoidal encodings.
    Needs an even d_model.
    """
    if d_model <= 0 or d_model % 2:
        raise ValueError(f"d_model must be positive and even (sin, cos pairs); got {d_model}")
    omegas = 1 / 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    c, s = torch.cos(offset * omegas), torch.sin(offset * omegas)
    # sin(a+b) = sin a cos b + cos a sin b ;  cos(a+b) = cos a cos b - sin a sin b
    blocks = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)
    return torch.block_diag(*blocks).to(torch.float32)


class BertLayerFromScratch(nn.Module):
    """One post-LayerNorm BERT encoder layer built from MultiHeadAttention:

        h   = LayerNorm(x + Attention(x))
        out = LayerNorm(h + W2 · GELU(W1 · h))

    No dropout (inference only). `from_bert_layer` loads the weights of a transformers BertLayer.
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, layer_norm_eps: float = 1e-12):
        super().__init__()
        self.attention = MultiHeadAttention(d_model, num_heads)
        self.attention_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.ff_in = nn.Linear(d_model, d_ff)
        self.ff_out = nn.Linear(d_ff, d_model)
        self.ff_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """x (batch, seq, d_model); mask as in MultiHeadAttention. Returns (output, weights)."""
        attended, weights = self.attention(x, x, x, mask)
        h = self.attention_norm(x + attended)
        # BERT's "gelu" is the exact erf form, which is F.gelu's default
        out = self.ff_norm(h + self.ff_out(F.gelu(self.ff_in(h))))
        return out, weights

    @classmethod
    def from_bert_layer(cls, layer: nn.Module) -> "BertLayerFromScratch":
        """Copy the weights of a transformers BertLayer (e.g. model.encoder.layer[0])."""
        self_attn, attn_out = layer.attention.self, layer.attention.output
        act = getattr(layer.intermediate, "intermediate_act_fn", None)
        if type(act).__name__ != "GELUActivation":
            raise ValueError(f"only BERT layers with hidden_act='gelu' are supported; this one "
                             f"uses {type(act).__name__}")
        ours = cls(d_model=self_attn.query.in_features, num_heads=self_attn.num_attention_heads,
                   d_ff=layer.intermediate.dense.out_features,
                   layer_norm_eps=attn_out.LayerNorm.eps)
        pairs = [
            (ours.attention.q_proj, self_attn.query),
            (ours.attention.k_proj, self_attn.key),
            (ours.attention.v_proj, self_attn.value),
            (ours.attention.out_proj, attn_out.dense),
            (ours.attention_norm, attn_out.LayerNorm),
            (ours.ff_in, layer.intermediate.dense),
            (ours.ff_out, layer.output.dense),
            (ours.ff_norm, layer.output.LayerNorm),
        ]
        with torch.no_grad():
            for mine, theirs in pairs:
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
        return ours.to(self_attn.query.weight.dtype)

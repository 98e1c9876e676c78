"""Tests for minimodels.layers: our attention against PyTorch's, masks, patches, time embeddings."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minimodels.layers import (
    MultiHeadAttention,
    PatchEmbedding,
    TimestepEmbedding,
    TransformerBlock,
    patchify,
    timestep_embedding,
    unpatchify,
)

TOL = 1e-5


def reference_attention(mha, x, context=None, keep=None, is_causal=False):
    """The same layer computed with F.scaled_dot_product_attention and the layer's own weights.

    `keep` is a bool mask broadcastable to (B, nh, T, S), True = may attend.
    """
    context = x if context is None else context
    B, T, C = x.shape
    S = context.shape[1]
    nh, hs = mha.num_heads, mha.head_dim
    q = F.linear(x, mha.q_proj.weight, mha.q_proj.bias).view(B, T, nh, hs).transpose(1, 2)
    k = F.linear(context, mha.k_proj.weight, mha.k_proj.bias).view(B, S, nh, hs).transpose(1, 2)
    v = F.linear(context, mha.v_proj.weight, mha.v_proj.bias).view(B, S, nh, hs).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=is_causal)
    y = y.transpose(1, 2).reshape(B, T, C)
    return F.linear(y, mha.out_proj.weight, mha.out_proj.bias)


def padding_mask(lengths, S):
    """(B, S) bool, True for the first `length` positions of each row."""
    return torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]


# ------------------------------------------------------------------------------------------
# MultiHeadAttention == F.scaled_dot_product_attention
# ------------------------------------------------------------------------------------------

CASES = ["self", "cross", "padded", "causal", "padded+causal", "attn_mask_3d"]


@pytest.mark.parametrize("return_attention", [False, True], ids=["fast", "manual"])
@pytest.mark.parametrize("case", CASES)
def test_attention_matches_sdpa(case, return_attention):
    torch.manual_seed(0)
    B, T, S, dim, nh, cdim = 2, 6, 9, 16, 4, 12
    x = torch.randn(B, T, dim)
    kwargs, ref_kwargs = {}, {}
    if case == "cross":
        mha = MultiHeadAttention(dim, nh, context_dim=cdim).eval()
        ctx = torch.randn(B, S, cdim)
        kwargs["context"] = ref_kwargs["context"] = ctx
    else:
        mha = MultiHeadAttention(dim, nh).eval()
    if case in ("padded", "padded+causal"):
        kpm = padding_mask([4, 6], T)
        kwargs["key_padding_mask"] = kpm
        ref_kwargs["keep"] = kpm[:, None, None, :]
    if case == "causal":
        kwargs["is_causal"] = ref_kwargs["is_causal"] = True
    if case == "padded+causal":
        kwargs["is_causal"] = True
        ref_kwargs["keep"] = ref_kwargs["keep"] & torch.ones(T, T, dtype=torch.bool).tril()
    if case == "attn_mask_3d":
        am = torch.rand(B, T, T) > 0.4
        am[:, :, 0] = True  # every query keeps at least one key
        kwargs["attn_mask"] = am
        ref_kwargs["keep"] = am[:, None]

    expected = reference_attention(mha, x, **ref_kwargs)
    out = mha(x, return_attention=return_attention, **kwargs)
    if return_attention:
        out, weights = out
        S_ = kwargs["context"].shape[1] if "context" in kwargs else T
        assert weights.shape == (B, nh, T, S_)
    assert out.shape == (B, T, dim)
    torch.testing.assert_close(out, expected, atol=TOL, rtol=TOL)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 7),
    S=st.integers(1, 7),
    nh=st.sampled_from([1, 2, 4]),
    causal=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_fast_path_equals_manual_path(B, T, S, nh, causal, seed):
    """Property: for any shapes and random masks, fused and readable paths agree."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dim = 8 * nh
    mha = MultiHeadAttention(dim, nh, context_dim=5).eval()
    x, ctx = torch.randn(B, T, dim, generator=g), torch.randn(B, S, 5, generator=g)
    kpm = torch.rand(B, S, generator=g) > 0.3  # may mask every key of a row
    fast = mha(x, ctx, key_padding_mask=kpm, is_causal=causal)
    manual, w = mha(x, ctx, key_padding_mask=kpm, is_causal=causal, return_attention=True)
    assert torch.isfinite(fast).all() and torch.isfinite(manual).all()
    torch.testing.assert_close(fast, manual, atol=TOL, rtol=TOL)
    # Rows of the weights sum to 1, or to 0 when the query has no key left to attend to.
    keep = kpm[:, None, None, :] & (torch.ones(T, S, dtype=torch.bool).tril() if causal else True)
    row_sum = w.sum(-1)
    torch.testing.assert_close(row_sum, keep.any(-1).float().expand_as(row_sum))


# ------------------------------------------------------------------------------------------
# Our mask convention vs torch.nn.MultiheadAttention's (opposite meaning of True)
# ------------------------------------------------------------------------------------------


def to_torch_mha(mha: MultiHeadAttention) -> nn.MultiheadAttention:
    """A torch.nn.MultiheadAttention holding exactly our weights."""
    cross = mha.context_dim != mha.dim
    ref = nn.MultiheadAttention(
        mha.dim,
        mha.num_heads,
        batch_first=True,
        kdim=mha.context_dim if cross else None,
        vdim=mha.context_dim if cross else None,
    )
    with torch.no_grad():
        if cross:
            ref.q_proj_weight.copy_(mha.q_proj.weight)
            ref.k_proj_weight.copy_(mha.k_proj.weight)
            ref.v_proj_weight.copy_(mha.v_proj.weight)
        else:
            ref.in_proj_weight.copy_(
                torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight])
            )
        ref.in_proj_bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias]))
        ref.out_proj.weight.copy_(mha.out_proj.weight)
        ref.out_proj.bias.copy_(mha.out_proj.bias)
    return ref.eval()


@pytest.mark.parametrize("cross", [False, True])
def test_matches_nn_multihead_attention_with_inverted_masks(cross):
    torch.manual_seed(0)
    B, T, dim, nh = 2, 5, 16, 4
    S = 7 if cross else T
    cdim = 10 if cross else dim
    mha = MultiHeadAttention(dim, nh, context_dim=cdim if cross else None).eval()
    ref = to_torch_mha(mha)
    x = torch.randn(B, T, dim)
    ctx = torch.randn(B, S, cdim) if cross else x
    kpm = padding_mask([S - 2, S], S)  # ours: True = keep
    am = torch.ones(T, S, dtype=torch.bool).tril(diagonal=1)  # ours: True = keep

    ours, w_ours = mha(
        x, ctx if cross else None, key_padding_mask=kpm, attn_mask=am, return_attention=True
    )
    theirs, w_theirs = ref(
        x, ctx, ctx, key_padding_mask=~kpm, attn_mask=~am, average_attn_weights=False
    )  # theirs: True = masked out, hence the ~
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=TOL)
    torch.testing.assert_close(w_ours, w_theirs, atol=TOL, rtol=TOL)
    # Handing our mask to torch un-inverted keeps exactly the padding instead: a different answer.
    ours_pad_only = mha(x[:1], ctx[:1] if cross else None, key_padding_mask=kpm[:1])
    wrong, _ = ref(x[:1], ctx[:1], ctx[:1], key_padding_mask=kpm[:1])
    assert not torch.allclose(ours_pad_only, wrong, atol=1e-3)


# ------------------------------------------------------------------------------------------
# Attention weights and masks
# ------------------------------------------------------------------------------------------


def test_weights_sum_to_one_and_are_zero_at_masked_keys():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2).eval()
    x = torch.randn(3, 6, 16)
    kpm = padding_mask([6, 4, 1], 6)
    _, w = mha(x, key_padding_mask=kpm, return_attention=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 6))
    masked = ~kpm[:, None, None, :].expand_as(w)
    assert (w[masked] == 0).all()
    assert (w[~masked] > 0).all()


def test_fully_masked_query_row_gives_finite_zero_attention():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(1, 3, 8, requires_grad=True)
    am = torch.tensor([[True, True, False], [False, False, False], [True, True, True]])
    for return_attention in (False, True):
        res = mha(x, attn_mask=am, return_attention=return_attention)
        out = res[0] if return_attention else res
        assert torch.isfinite(out).all()
        # Row 1 attends to nothing: zero attention output, so only the output bias remains.
        torch.testing.assert_close(out[0, 1], mha.out_proj.bias.detach().expand(8))
        out.sum().backward()
        assert torch.isfinite(x.grad).all()
        x.grad = None
    _, w = mha(x, attn_mask=am, return_attention=True)
    assert (w[:, :, 1] == 0).all()


@pytest.mark.parametrize("layer", ["attention", "block"])
def test_causal_output_does_not_depend_on_later_tokens(layer):
    torch.manual_seed(0)
    T, t = 8, 4
    model = (MultiHeadAttention(16, 4) if layer == "attention" else TransformerBlock(16, 4)).eval()
    x = torch.randn(2, T, 16)
    x_changed = x.clone()
    x_changed[:, t + 1 :] = torch.randn(2, T - t - 1, 16)  # change only the future
    y, y_changed = model(x, is_causal=True), model(x_changed, is_causal=True)
    torch.testing.assert_close(y[:, : t + 1], y_changed[:, : t + 1], atol=0, rtol=0)
    assert not torch.allclose(y[:, t + 1 :], y_changed[:, t + 1 :])
    # Without the causal mask, the past does see the future.
    assert not torch.allclose(model(x)[:, :t], model(x_changed)[:, :t])


def test_padding_tokens_do_not_influence_real_tokens():
    torch.manual_seed(0)
    block = TransformerBlock(16, 4).eval()
    x = torch.randn(1, 6, 16)
    x2 = x.clone()
    x2[:, 4:] = 100.0  # garbage in the padding
    kpm = padding_mask([4], 6)
    y, y2 = block(x, key_padding_mask=kpm), block(x2, key_padding_mask=kpm)
    torch.testing.assert_close(y[:, :4], y2[:, :4])


def test_cross_attention_masks_context_padding():
    torch.manual_seed(0)
    block = TransformerBlock(16, 4, cross_attention=True, context_dim=12).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 9, 12)
    ctx2 = ctx.clone()
    ctx2[:, 6:] = -50.0
    cpm = padding_mask([6, 6], 9)
    y, attn = block(x, ctx, context_padding_mask=cpm, return_attention=True)
    y2 = block(x, ctx2, context_padding_mask=cpm)
    torch.testing.assert_close(y, y2)
    assert set(attn) == {"self", "cross"}
    assert attn["self"].shape == (2, 4, 5, 5) and attn["cross"].shape == (2, 4, 5, 9)
    assert (attn["cross"][..., 6:] == 0).all()


def test_block_without_cross_attention_returns_self_weights_only():
    block = TransformerBlock(8, 2, mlp_ratio=2.0)
    y, attn = block(torch.randn(1, 3, 8), return_attention=True)
    assert y.shape == (1, 3, 8) and list(attn) == ["self"]
    assert block.mlp[0].out_features == 16


def test_kv_cache_gives_the_causal_forward_of_the_whole_sequence():
    torch.manual_seed(0)
    block = TransformerBlock(16, 4).eval()
    x = torch.randn(2, 9, 16)
    full = block(x, is_causal=True)
    cache: list = []
    with torch.no_grad():  # 4 positions at once, then one at a time, then the last two
        parts = [block(x[:, :4], is_causal=True, kv_cache=cache)]
        parts += [block(x[:, t : t + 1], is_causal=True, kv_cache=cache) for t in (4, 5, 6)]
        parts.append(block(x[:, 7:], is_causal=True, kv_cache=cache))
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)
    assert cache[0].shape == (2, 4, 9, 4)  # K: (B, nh, positions seen, head size)


def test_eval_mode_is_deterministic_and_dtype_follows_input():
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, dropout=0.5).eval()
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(block(x), block(x), atol=0, rtol=0)
    block64 = block.double()
    assert block64(x.double(), is_causal=True).dtype == torch.float64


# ------------------------------------------------------------------------------------------
# Patches
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls_token", [True, False])
def test_patch_embedding_shapes(cls_token):
    pe = PatchEmbedding(image_size=32, patch_size=4, in_channels=3, dim=24, cls_token=cls_token)
    out = pe(torch.rand(5, 3, 32, 32))
    assert pe.num_patches == 64 and pe.grid_size == 8
    assert out.shape == (5, 64 + int(cls_token), 24)
    assert pe.pos_embed.shape == (1, 64 + int(cls_token), 24)


def test_patchify_order_and_roundtrip():
    images = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 4 * 4 * 3)
    # Patch 4 = row 1, column 1 of the 2×3 grid; each row reshapes to a (p, p, C) picture.
    crop = images[1, :, 4:8, 4:8].permute(1, 2, 0)
    torch.testing.assert_close(patches[1, 4].view(4, 4, 3), crop)
    torch.testing.assert_close(unpatchify(patches, 4, (8, 12)), images)


def test_conv_patch_embedding_equals_linear_map_on_patches():
    torch.manual_seed(0)
    pe = PatchEmbedding(image_size=16, patch_size=4, in_channels=3, dim=10, cls_token=False)
    images = torch.rand(2, 3, 16, 16)
    # Conv weight (dim, C, p, p) -> a matrix acting on patches flattened as (p, p, C).
    W = pe.proj.weight.permute(0, 2, 3, 1).reshape(10, -1)
    linear = patchify(images, 4) @ W.T + pe.proj.bias
    torch.testing.assert_close(pe(images), linear + pe.pos_embed, atol=TOL, rtol=TOL)


# ------------------------------------------------------------------------------------------
# Time-step embedding
# ------------------------------------------------------------------------------------------


def test_timestep_embedding_at_zero_is_cos_one_sin_zero():
    emb = timestep_embedding(torch.tensor([0, 0]), 8)  # flip_sin_to_cos=True: [cos, sin]
    assert emb.shape == (2, 8) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[:, :4], torch.ones(2, 4))
    torch.testing.assert_close(emb[:, 4:], torch.zeros(2, 4))
    emb = timestep_embedding(torch.tensor([0]), 8, flip_sin_to_cos=False)  # [sin, cos]
    torch.testing.assert_close(emb, torch.tensor([[0.0] * 4 + [1.0] * 4]))


@pytest.mark.parametrize("flip,shift,dim", [(True, 0, 16), (False, 1, 16), (True, 1, 7)])
def test_timestep_embedding_values(flip, shift, dim):
    t = torch.tensor([0.0, 1.0, 3.5, 17.0, 999.0])
    emb = timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    half = dim // 2
    expected = np.zeros((len(t), dim))
    for n, tn in enumerate(t.double().numpy()):
        for i in range(half):
            omega = 10000.0 ** (-i / (half - shift))
            s, c = math.sin(tn * omega), math.cos(tn * omega)
            first, second = (c, s) if flip else (s, c)
            expected[n, i], expected[n, half + i] = first, second
    # float32 angles up to t=999 carry ~1e-4 rounding, hence the tolerance.
    np.testing.assert_allclose(emb.numpy(), expected, atol=3e-4)
    torch.testing.assert_close(emb, timestep_embedding(t, dim, 10000, flip, shift), atol=0, rtol=0)


def test_timestep_embedding_matches_diffusers():
    diffusers_embeddings = pytest.importorskip("diffusers.models.embeddings")
    t = torch.tensor([0, 3, 250, 999])
    for flip, shift, dim in [(True, 0, 32), (False, 1, 32), (True, 1, 9)]:
        theirs = diffusers_embeddings.get_timestep_embedding(
            t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift
        )
        ours = timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_timestep_embedding_module():
    torch.manual_seed(0)
    te = TimestepEmbedding(16)
    out = te(torch.tensor([1, 500]))
    assert out.shape == (2, 64)
    assert not torch.allclose(out[0], out[1])


def test_layers_trust_their_callers_but_state_the_one_structural_rule():
    # Inner layers check nothing at run time (the models' entry points do); the width must
    # split evenly into heads, which the constructor says at once.
    with pytest.raises(AssertionError, match="divisible by num_heads"):
        MultiHeadAttention(10, 3)

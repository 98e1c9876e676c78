"""The Diffusion Transformer: same numbers as diffusers' DiT, adaLN-Zero, conditioning, errors."""

import pytest
import torch

from minimodels.dit import DiTBlock, DiTConfig, DiTTransformer2DModel, modulate


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter (also the zero-initialised ones) with random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def test_same_numbers_as_diffusers_dit():
    diffusers = pytest.importorskip("diffusers")
    cfg = DiTConfig(
        sample_size=8, in_channels=4, patch_size=2, hidden_size=32, num_layers=2,
        num_attention_heads=2, mlp_ratio=4.0, num_classes=5, frequency_embedding_size=256,
    )  # fmt: skip
    ours = DiTTransformer2DModel(cfg).eval()
    _randomise(ours)
    ref = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=5,
    ).eval()  # fmt: skip
    # diffusers' DiT has fixed sine-cosine positions; ours are learned: copy theirs into ours.
    state = {
        "pos_embed.pos_embed": ref.pos_embed.pos_embed,
        "pos_embed.proj.weight": "pos_embed.proj.weight",
        "pos_embed.proj.bias": "pos_embed.proj.bias",
        "proj_out_1.weight": "adaLN_out.1.weight",
        "proj_out_1.bias": "adaLN_out.1.bias",
        "proj_out_2.weight": "proj_out.weight",
        "proj_out_2.bias": "proj_out.bias",
    }
    names = {
        "attn1.to_q": "attn.q_proj", "attn1.to_k": "attn.k_proj", "attn1.to_v": "attn.v_proj",
        "attn1.to_out.0": "attn.out_proj", "ff.net.0.proj": "mlp.0", "ff.net.2": "mlp.2",
        "norm1.linear": "adaLN_modulation.1",
        # every diffusers block holds its own copy of the time and label embeddings
        "norm1.emb.timestep_embedder.linear_1": "@time_embed.mlp.0",
        "norm1.emb.timestep_embedder.linear_2": "@time_embed.mlp.2",
    }  # fmt: skip
    ours_state = ours.state_dict()
    ref_state = {}
    for k in ref.state_dict():
        if k in state:
            v = state[k]
            ref_state[k] = ours_state[v] if isinstance(v, str) else v
            continue
        block, rest = k.split(".", 2)[1], k.split(".", 2)[2]
        if rest == "norm1.emb.class_embedder.embedding_table.weight":
            ref_state[k] = ours_state["class_embed.weight"]
            continue
        stem, kind = rest.rsplit(".", 1)
        target = names[stem]
        target = target[1:] if target.startswith("@") else f"blocks.{block}.{target}"
        ref_state[k] = ours_state[f"{target}.{kind}"]
    ref.load_state_dict(ref_state)
    with torch.no_grad():
        ours.pos_embed.pos_embed.copy_(ref.pos_embed.pos_embed)

    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 17, 999])
    labels = torch.tensor([0, 4, 5])  # 5 = the null class of classifier-free guidance
    with torch.no_grad():
        expected = ref(x, timestep=t, class_labels=labels).sample
        got = ours(x, t, class_labels=labels)
    err = ((got - expected).norm() / expected.norm()).item()
    assert expected.abs().mean() > 0.1  # a real comparison, not two zero tensors
    assert err < 1e-5, f"relative error vs diffusers' DiTTransformer2DModel: {err:.2e}"


def test_adaln_zero_starts_as_identity_and_predicts_zero():
    torch.manual_seed(0)
    block = DiTBlock(32, 4)
    x, c = torch.randn(2, 9, 32), torch.randn(2, 32)
    assert torch.equal(block(x, c), x)  # α = 0: both residual branches are switched off
    model = DiTTransformer2DModel(DiTConfig(hidden_size=32, cond_dim=8))
    eps = model(torch.randn(2, 16, 6, 6), torch.tensor([5, 500]), condition=torch.randn(2, 8))
    assert eps.shape == (2, 16, 6, 6) and torch.count_nonzero(eps) == 0
    # one optimizer step moves the gates away from zero, so training can start
    eps.sum().backward()
    assert model.proj_out.weight.grad.abs().sum() > 0


def test_modulate_is_the_adaln_formula():
    x, shift, scale = torch.randn(2, 5, 8), torch.randn(2, 8), torch.randn(2, 8)
    expected = torch.stack([x[b] * (1 + scale[b]) + shift[b] for b in range(2)])
    torch.testing.assert_close(modulate(x, shift, scale), expected)


def test_condition_timestep_and_drop_change_the_output():
    torch.manual_seed(0)
    model = DiTTransformer2DModel(DiTConfig(hidden_size=32, cond_dim=8)).eval()
    _randomise(model, seed=1)
    x, t = torch.randn(2, 16, 6, 6), torch.tensor([10, 10])
    c1, c2 = torch.randn(2, 8), torch.randn(2, 8)
    with torch.no_grad():
        a, b = model(x, t, condition=c1), model(x, t, condition=c2)
        later = model(x, torch.tensor([900, 900]), condition=c1)
        null = model(x, t)  # condition=None: the learned null embedding
        dropped = model(x, t, condition=c1, drop_condition=torch.tensor([True, False]))
    assert (a - b).abs().max() > 1e-3, "the condition must change ε̂"
    assert (a - later).abs().max() > 1e-3, "the time step must change ε̂"
    torch.testing.assert_close(dropped[0], null[0])  # dropped example = unconditional
    torch.testing.assert_close(dropped[1], a[1])  # kept example = conditional
    # a scalar timestep is used for the whole batch
    torch.testing.assert_close(model(x, 10, condition=c1), a)


def test_patches_are_put_back_where_they_came_from():
    # With every token's output equal to its own patch index, unpatchify must paint patch n at
    # grid cell n (row-major), the same order patchify reads them in.
    model = DiTTransformer2DModel(DiTConfig(sample_size=6, patch_size=2, hidden_size=16,
                                            num_attention_heads=2, num_layers=1))  # fmt: skip
    captured = {}

    def token_index(module, inputs, out):  # (B, N, p·p·C) -> token n everywhere holds n
        captured["shape"] = tuple(out.shape)
        return torch.arange(9.0)[None, :, None].expand_as(out)

    model.proj_out.register_forward_hook(token_index)
    eps = model(torch.randn(1, 16, 6, 6), 3)
    assert captured["shape"] == (1, 9, 2 * 2 * 16)  # N = (6/2)² tokens of p·p·C values
    expected = torch.arange(9.0).view(3, 3).repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(eps[0, 0], expected)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sample=torch.randn(2, 4, 6, 6)), ValueError, "sample must have shape"),
        (dict(sample=torch.zeros(2, 16, 6, 6, dtype=torch.long)), TypeError, "floating-point"),
        (dict(timestep=torch.tensor([1, 2, 3])), ValueError, "timestep must be a scalar"),
        (dict(timestep="5"), TypeError, "timestep must be a torch.Tensor"),
        (dict(timestep=torch.tensor([True, False])), TypeError, "timestep must be a real"),
        (dict(condition=torch.randn(2, 7)), ValueError, "condition must have shape"),
        (dict(class_labels=torch.tensor([0, 1])), ValueError, "num_classes=0"),
        (dict(drop_condition=torch.tensor([1, 0])), TypeError, "drop_condition must be a bool"),
        (dict(drop_condition=torch.tensor([True])), ValueError, "drop_condition must have shape"),
        (
            dict(condition=torch.ones(2, 8, dtype=torch.long)),
            TypeError,
            "condition must be a float",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, error, match):
    model = DiTTransformer2DModel(DiTConfig(hidden_size=32, cond_dim=8))
    args = dict(sample=torch.randn(2, 16, 6, 6), timestep=torch.tensor([1, 2]))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        model(args.pop("sample"), args.pop("timestep"), **args)


def test_bad_configs_and_class_labels_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        DiTTransformer2DModel(DiTConfig(sample_size=6, patch_size=4))
    with pytest.raises(ValueError, match="num_attention_heads"):
        DiTTransformer2DModel(DiTConfig(hidden_size=30, num_attention_heads=4))
    model = DiTTransformer2DModel(DiTConfig(hidden_size=32, num_classes=3))
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, vocab_size=4\)"):
        model(torch.randn(1, 16, 6, 6), 0, class_labels=torch.tensor([4]))  # 3 = the null class
    with pytest.raises(TypeError, match="class_labels must be an integer"):
        model(torch.randn(1, 16, 6, 6), 0, class_labels=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="class_labels must have shape"):
        model(torch.randn(1, 16, 6, 6), 0, class_labels=torch.tensor([1, 2]))

"""The U-Net: shapes, time-step and text conditioning, padding, and its entry-point checks."""

import pytest
import tiny
import torch

from minimodels.unet import AttentionBlock2D, ResnetBlock2D, UNet2DModel, UNetConfig


def _randomised(**kwargs) -> UNet2DModel:
    torch.manual_seed(0)
    m = UNet2DModel(UNetConfig(**{**tiny.UNET, **kwargs})).eval()
    for p in m.parameters():  # leave the zero initialisation so every path matters
        torch.nn.init.normal_(p, std=0.2)
    return m


def test_unet_shapes_time_and_text_conditioning():
    m = _randomised(cross_attention_dim=12)
    x, ctx = torch.randn(3, 3, 16, 16), torch.randn(3, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 3).bool()
    with torch.no_grad():
        out = m(x, torch.tensor([1, 500, 999]), ctx, mask)
        assert out.shape == x.shape
        assert (m(x, 10, ctx, mask) - m(x, 900, ctx, mask)).abs().max() > 1e-3  # t matters
        ctx2 = ctx.clone()
        ctx2[:, :3] += 1.0
        assert (m(x, 10, ctx2, mask) - m(x, 10, ctx, mask)).abs().max() > 1e-3  # text matters
        ctx3 = ctx.clone()
        ctx3[:, 3:] = 100.0  # padding tokens are ignored
        torch.testing.assert_close(m(x, 10, ctx3, mask), m(x, 10, ctx, mask))
        # an int, a 0-d tensor and one step per sample give the same answer
        torch.testing.assert_close(m(x, 10, ctx, mask), m(x, torch.tensor(10), ctx, mask))
        torch.testing.assert_close(m(x, 10, ctx, mask), m(x, torch.full((3,), 10), ctx, mask))


def test_a_fresh_unet_predicts_zero_noise_and_blocks_start_as_identity():
    m = UNet2DModel(UNetConfig(**tiny.UNET))
    assert torch.count_nonzero(m(torch.randn(2, 3, 16, 16), 5)) == 0  # conv_out starts at 0
    block = ResnetBlock2D(8, 8, temb_dim=32, groups=4)
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(block(x, torch.randn(2, 32)), x)  # conv2 starts at 0


def test_cross_attention_reads_the_text_self_attention_alone_without_it():
    torch.manual_seed(0)
    attn = AttentionBlock2D(16, head_dim=8, context_dim=12)
    x = torch.randn(2, 16, 4, 4)
    a = attn(x, torch.randn(2, 3, 12))
    b = attn(x, torch.randn(2, 3, 12))
    assert a.shape == x.shape and (a - b).abs().max() > 1e-4
    no_text = AttentionBlock2D(16, head_dim=8, context_dim=None)
    assert no_text.attn2 is None and no_text(x).shape == x.shape


def test_entry_point_checks_name_the_argument():
    m = _randomised(cross_attention_dim=12)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="sample must have shape"):
        m(torch.randn(2, 3, 9, 9), 1)
    with pytest.raises(TypeError, match="sample must be a floating-point"):
        m(x.long(), 1)
    with pytest.raises(ValueError, match="timestep must be at most 999"):
        m(x, 1000)
    with pytest.raises(ValueError, match="timestep must have B=2 entries"):
        m(x, torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="timestep"):
        m(x, "5")
    with pytest.raises(ValueError, match="encoder_hidden_states must have shape"):
        m(x, 1, torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="encoder_attention_mask must have shape"):
        m(x, 1, torch.randn(2, 5, 12), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="unconditional"):
        _randomised()(x, 1, torch.randn(2, 5, 12))


def test_structural_config_errors_are_caught_when_the_model_is_built():
    with pytest.raises(ValueError, match="sample_size must be divisible by 4"):
        UNet2DModel(UNetConfig(sample_size=10, block_out_channels=(8, 16, 32), norm_num_groups=4,
                               attention_head_dim=8))  # fmt: skip
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNet2DModel(UNetConfig(**{**tiny.UNET, "norm_num_groups": 3}))
    with pytest.raises(TypeError, match="config must be a UNetConfig"):
        UNet2DModel({"sample_size": 16})
    # a config read back from JSON holds lists; the model sees tuples
    assert UNetConfig(block_out_channels=[8, 16]).block_out_channels == (8, 16)

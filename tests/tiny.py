"""Tiny configurations of the models, shared by their tests and their recipes' tests: small
enough that a forward pass takes milliseconds, big enough to exercise every code path."""

import torch

from minimodels.clip import CLIPConfig
from minimodels.gpt import GPT, GPTConfig
from minimodels.llava import LlavaConfig
from minimodels.vilbert import ViLBERTConfig
from minimodels.vilt import ViLTConfig

CLIP = CLIPConfig(vision_width=32, vision_layers=2, text_width=32, text_layers=1, embed_dim=16)
VILBERT = ViLBERTConfig(cnn_channels=16, text_width=32, vision_width=32, num_heads=4, bi_hidden=32)
VILT = ViLTConfig(width=32, layers=2, heads=4, patch_size=8)
UNET = dict(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8)
LLAVA = LlavaConfig(
    vision_config=CLIPConfig(patch_size=4, vision_width=16, vision_layers=2, text_width=16,
                             text_layers=1, embed_dim=16),
    text_config=GPTConfig(n_embd=32, n_layer=1, n_head=4),
    pool=2,
)  # fmt: skip


def lm(seed: int = 0) -> GPT:
    """A two-layer GPT for the frozen-LM models (Frozen, Flamingo, BLIP-2)."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()

"""CLIP.from_hf: our CLIP built from a transformers CLIPModel gives HF's features and logits.

A tiny random CLIPModel is built from a config (no download), so the test runs offline."""

import pytest
import torch

from minimodels.clip import CLIP, hf_key_map

transformers = pytest.importorskip("transformers")

TOL = 1e-4  # max abs difference, float32


def features(out) -> torch.Tensor:
    """get_image_features / get_text_features return a tensor in transformers 4 and a
    BaseModelOutputWithPooling (the projected features in pooler_output) in transformers 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def hf_clip(eos_token_id: int = 98, hidden_act: str = "quick_gelu", seed: int = 0):
    torch.manual_seed(seed)
    common = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, hidden_act=hidden_act)  # fmt: skip
    text = dict(vocab_size=99, max_position_embeddings=16, eos_token_id=eos_token_id,
                bos_token_id=97, pad_token_id=1, **common)  # fmt: skip
    vision = dict(image_size=30, patch_size=5, **common)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    return transformers.CLIPModel(config).eval()


def text_batch(eos_token_id: int, lengths=(16, 9, 5, 2), seed: int = 1):
    """input_ids (B, 16) with the eos at the end of each text, padded after it (mask 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (len(lengths), 16), generator=g)  # no pad among the words
    ids[ids == eos_token_id] = 3  # and the eos only where it is put below
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, n - 1] = eos_token_id  # the end-of-text token closes each text
        ids[i, n:] = 1  # padding
        mask[i, :n] = 1
    return ids, mask


@pytest.fixture(scope="module")
def pair():
    hf = hf_clip()
    return hf, CLIP.from_hf(hf)


def test_config_and_weights_are_copied(pair):
    hf, ours = pair
    c = ours.config
    assert (c.image_size, c.patch_size, c.vision_width, c.vision_layers) == (30, 5, 32, 2)
    assert (c.vocab_size, c.context_length, c.embed_dim) == (99, 16, 24)
    assert (c.vision_mlp_width, c.text_mlp_width, c.activation) == (37, 37, "quick_gelu")
    assert c.causal_text and c.text_pool == "eos" and c.eos_token_id == 98
    assert not c.patch_bias and c.pixels_normalized and c.pad_token_id is None
    assert ours.vision_blocks[0].mlp[0].out_features == 37
    assert ours.patch_embed.proj.bias is None
    keys = hf_key_map(c)
    assert set(keys) == set(ours.state_dict())  # every weight of ours comes from HF
    hf_state = hf.state_dict()
    for k, h in keys.items():
        torch.testing.assert_close(ours.state_dict()[k].flatten(), hf_state[h].flatten())
    assert ours.logit_scale.item() == hf.logit_scale.item()
    assert not ours.training


@torch.no_grad()
def test_image_features_equal_hf(pair):
    hf, ours = pair
    # CLIPImageProcessor's pixel_values: (x − mean) / std, values well outside [0, 1]
    pixel_values = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(0)) * 1.5
    theirs = features(hf.get_image_features(pixel_values=pixel_values))
    mine = ours.encode_image(pixel_values)
    assert mine.shape == theirs.shape == (3, 24)
    assert (mine - theirs).abs().max().item() < TOL
    # the penultimate layer's patch features are HF's hidden_states[-2] without [CLS]
    states = hf.vision_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    patches = ours.encode_image_features(pixel_values, layer=-2)
    assert (patches - states[-2][:, 1:]).abs().max().item() < TOL


@pytest.mark.parametrize("eos_token_id", [98, 2])  # 2: HF's legacy rule, pool at argmax(ids)
@torch.no_grad()
def test_text_features_equal_hf_with_padding(eos_token_id):
    hf = hf_clip(eos_token_id=eos_token_id)
    ours = CLIP.from_hf(hf)
    assert ours.config.text_pool == ("argmax" if eos_token_id == 2 else "eos")
    ids, mask = text_batch(98)  # with eos_token_id=2, 98 is still the largest id of each row
    theirs = features(hf.get_text_features(input_ids=ids, attention_mask=mask))
    mine = ours.encode_text(ids, attention_mask=mask)
    assert mine.shape == theirs.shape == (4, 24)
    assert (mine - theirs).abs().max().item() < TOL
    # the tokenizer's dict works too, and without a mask no id counts as padding (as in HF)
    torch.testing.assert_close(ours.encode_text({"input_ids": ids, "attention_mask": mask}), mine)
    unmasked = features(hf.get_text_features(input_ids=ids))
    assert (ours.encode_text(ids) - unmasked).abs().max().item() < TOL


@torch.no_grad()
def test_eos_pooling_takes_the_first_eos_not_the_largest_id():
    hf = hf_clip(eos_token_id=50)  # words above 50 in every row: argmax pooling would differ
    ours = CLIP.from_hf(hf)
    ids, mask = text_batch(50)
    ids[0, 10] = 50  # row 0 now has two eos tokens; HF pools at the first one
    assert (ids.argmax(-1) != (ids == 50).int().argmax(-1)).all()
    theirs = features(hf.get_text_features(input_ids=ids, attention_mask=mask))
    assert (ours.encode_text(ids, attention_mask=mask) - theirs).abs().max().item() < TOL


@torch.no_grad()
def test_gelu_checkpoints_convert_too():  # open_clip's LAION models use the exact GELU
    hf = hf_clip(hidden_act="gelu", seed=2)
    ours = CLIP.from_hf(hf)
    ids, mask = text_batch(98, seed=3)
    pixel_values = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    theirs = features(hf.get_text_features(input_ids=ids, attention_mask=mask))
    assert (ours.encode_text(ids, attention_mask=mask) - theirs).abs().max().item() < TOL
    theirs = features(hf.get_image_features(pixel_values=pixel_values))
    assert (ours.encode_image(pixel_values) - theirs).abs().max().item() < TOL


@torch.no_grad()
def test_forward_logits_equal_hf():
    hf = hf_clip(seed=4)
    hf.logit_scale.fill_(3.5)  # a temperature other than the init, below our clamp at 100
    ours = CLIP.from_hf(hf)
    assert ours.scale().item() == pytest.approx(hf.logit_scale.exp().item(), rel=1e-6)
    ids, mask = text_batch(98)
    pixel_values = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(4))
    out = hf(input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
    logits_per_image, logits_per_text = ours(pixel_values, {"input_ids": ids,
                                                            "attention_mask": mask})  # fmt: skip
    assert logits_per_image.shape == (3, 4)
    assert (logits_per_image - out.logits_per_image).abs().max().item() < TOL
    assert (logits_per_text - out.logits_per_text).abs().max().item() < TOL


class NotAClip(torch.nn.Module):
    def __init__(self, config=None):
        super().__init__()
        self.config = config


def test_wrong_arguments_raise(pair):
    hf, ours = pair
    with pytest.raises(TypeError, match="transformers CLIPModel"):
        CLIP.from_hf("openai/clip-vit-base-patch32")
    with pytest.raises(TypeError, match="transformers CLIPModel"):
        CLIP.from_hf(hf.text_model)  # a tower alone has no vision_config
    with pytest.raises(TypeError, match="transformers CLIPModel"):
        CLIP.from_hf(NotAClip(hf.config.text_config))
    with pytest.raises(ValueError, match="hidden_act"):
        CLIP.from_hf(hf_clip(hidden_act="gelu_new"))
    weightless = NotAClip(hf.config)  # the right config, but no weights at all
    with pytest.raises(ValueError, match="do not fit"):
        CLIP.from_hf(weightless)
    # a from_hf model takes normalised float pixel_values, not uint8 images
    with pytest.raises(TypeError, match="normalised"):
        ours.encode_image(torch.zeros(1, 3, 30, 30, dtype=torch.uint8))
    with pytest.raises(ValueError, match="(?i)nan"):
        ours.encode_image(torch.full((1, 3, 30, 30), float("nan")))

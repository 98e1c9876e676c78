"""ViLBERT (the model file): regions, co-attention, the heads, checks at the entry point.
Pre-training targets, batches, training and the shipped weights: tests/test_recipes_vilbert.py."""

import pytest
import tiny
import torch

from minimodels import shapeworld as sw
from minimodels.checkpoint import load_model, save_model
from minimodels.layers import MultiHeadAttention, TransformerBlock
from minimodels.vilbert import (
    IGNORE_INDEX,
    REGION_CLASSES,
    CoAttentionLayer,
    ViLBERT,
    ViLBERTConfig,
    box_masks,
    regions_from_scenes,
    spatial_encoding,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ViLBERT(tiny.VILBERT).eval()


# ---- regions -----------------------------------------------------------------------------------


def test_regions_from_scenes_puts_img_first_and_pads(test_data):
    _, scenes = test_data
    r = regions_from_scenes(scenes)
    R = 1 + max(len(s["objects"]) for s in scenes)
    assert r["boxes"].shape == (4, R, 4) and r["region_mask"].shape == (4, R)
    for i, s in enumerate(scenes):
        k = len(s["objects"])
        assert r["boxes"][i, 0].tolist() == [0, 0, 32, 32]  # [IMG]: the whole image
        assert r["region_mask"][i].tolist() == [True] * (1 + k) + [False] * (R - 1 - k)
        assert r["region_labels"][i, 0] == IGNORE_INDEX
        for j, o in enumerate(s["objects"], start=1):
            assert r["boxes"][i, j].tolist() == o["bbox"]
            assert REGION_CLASSES[r["region_labels"][i, j]] == f"{o['color']} {o['shape']}"


def test_spatial_encoding_is_normalised_corners_and_area():
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [8.0, 4.0, 16.0, 20.0]]])
    enc = spatial_encoding(boxes, 32)
    torch.testing.assert_close(enc[0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(enc[0, 1], torch.tensor([0.25, 0.125, 0.5, 0.625, 8 * 16 / 1024]))


def test_region_features_are_box_means_of_the_feature_map(model, test_data):
    images, scenes = test_data
    r = regions_from_scenes(scenes)
    x = images.float() / 255
    enc = model.region_encoder
    fmap = enc.cnn(x)  # (B, C, h, w)
    feats = enc(x, r["boxes"])
    m = box_masks(r["boxes"], 32, fmap.shape[-1])
    i, j = 0, 1
    cells = m[i, j].bool()
    torch.testing.assert_close(feats[i, j], fmap[i][:, cells].mean(dim=1))
    torch.testing.assert_close(feats[i, 0], fmap[i].mean(dim=(1, 2)))  # [IMG]: whole map
    # a box from pixel 8 to 16 covers cells 4..7 of a 16-cell grid (cell centres 9, 11, 13, 15)
    one = box_masks(torch.tensor([[[8.0, 0.0, 16.0, 32.0]]]), 32, 16)[0, 0]
    assert one[0].nonzero().flatten().tolist() == [4, 5, 6, 7]


# ---- the model ---------------------------------------------------------------------------------


def _forward(model, tok, images, scenes, captions=None, **kw):
    r = regions_from_scenes(scenes)
    captions = captions or [s["caption"] for s in scenes]
    return model(tok(captions), images, r["boxes"], region_mask=r["region_mask"], **kw)


def test_forward_shapes_and_attention_maps(model, tok, test_data):
    images, scenes = test_data
    out = _forward(model, tok, images, scenes, output_attentions=True)
    L = tok([s["caption"] for s in scenes])["input_ids"].shape[1]
    R = 1 + max(len(s["objects"]) for s in scenes)
    assert out.text_hidden.shape == (4, L, 32) and out.region_hidden.shape == (4, R, 32)
    assert out.mlm_logits.shape == (4, L, len(tok)) and out.mrm_logits.shape == (4, R, 30)
    assert out.itm_logits.shape == (4, 2) and out.vqa_logits.shape == (4, len(sw.ANSWERS))
    assert len(out.attentions) == tiny.VILBERT.co_layers
    w = out.attentions[0]
    assert w["text_to_region"].shape == (4, 4, L, R) and w["region_to_text"].shape == (4, 4, R, L)
    region_mask = regions_from_scenes(scenes)["region_mask"]
    # words attend only to real regions, and each row sums to 1
    assert (w["text_to_region"] * ~region_mask[:, None, None, :]).abs().max() == 0
    torch.testing.assert_close(w["text_to_region"].sum(-1), torch.ones(4, 4, L))
    # h_IMG ⊙ h_CLS
    h_cls = torch.tanh(model.text_pooler(out.text_hidden[:, 0]))
    h_img = torch.tanh(model.vision_pooler(out.region_hidden[:, 0]))
    torch.testing.assert_close(out.pooled, h_img * h_cls)
    torch.testing.assert_close(out.itm_score(), out.itm_logits[:, 1] - out.itm_logits[:, 0])


def test_padding_regions_and_words_change_nothing(model, tok, test_data):
    images, scenes = test_data
    one = [scenes[0]]
    r = regions_from_scenes(one)
    alone = model(tok([one[0]["caption"]]), images[:1], r["boxes"], region_mask=r["region_mask"])
    r2 = regions_from_scenes(one, max_regions=10)  # seven padding regions
    toks = tok([one[0]["caption"], "a red circle " * 8])  # padded words in row 0
    boxes = r2["boxes"].clone()
    boxes[0, 5:] = torch.tensor([1.0, 1.0, 5.0, 5.0])  # whatever sits in a padding slot
    padded = model(
        {k: v[:1] for k, v in toks.items()}, images[:1], boxes, region_mask=r2["region_mask"]
    )
    torch.testing.assert_close(padded.itm_logits, alone.itm_logits, rtol=1e-5, atol=1e-5)
    n = len(one[0]["objects"]) + 1
    torch.testing.assert_close(
        padded.region_hidden[:, :n], alone.region_hidden, rtol=1e-4, atol=1e-5
    )


def test_co_attention_exchanges_information_both_ways(model, tok, test_data):
    images, scenes = test_data
    base = _forward(model, tok, images, scenes)
    other_images = _forward(
        model, tok, images.flip(0), scenes[::-1], [s["caption"] for s in scenes]
    )
    other_text = _forward(model, tok, images, scenes, [s["caption"] for s in scenes[::-1]])
    # the words' states depend on the image, the regions' states on the words
    assert not torch.allclose(base.text_hidden, other_images.text_hidden, atol=1e-4)
    assert not torch.allclose(base.region_hidden[:, 0], other_text.region_hidden[:, 0], atol=1e-4)


def test_co_attention_layer_from_layers_pieces():
    torch.manual_seed(0)
    layer = CoAttentionLayer(32, 48, 4, 2.0).eval()
    t, v = torch.randn(2, 5, 32), torch.randn(2, 3, 48)
    tm, rm = torch.ones(2, 5, dtype=torch.bool), torch.tensor([[True, True, False]] * 2)
    t_out, v_out, w = layer(t, v, tm, rm, return_attention=True)
    tn, vn = layer.ln_text(t), layer.ln_vision(v)
    t1 = t + layer.text_cross(tn, vn, key_padding_mask=rm)  # queries words, keys/values regions
    v1 = v + layer.vision_cross(vn, tn, key_padding_mask=tm)
    torch.testing.assert_close(t_out, layer.text_block(t1, key_padding_mask=tm))
    torch.testing.assert_close(v_out, layer.vision_block(v1, key_padding_mask=rm))
    assert isinstance(layer.text_cross, MultiHeadAttention) and layer.text_cross.context_dim == 48
    assert isinstance(layer.vision_block, TransformerBlock)
    assert w["text_to_region"][..., 2].abs().max() == 0  # the padded region gets no weight


def test_masked_regions_keep_only_the_spatial_vector(model, test_data):
    images, scenes = test_data
    r = regions_from_scenes(scenes)
    masked = torch.zeros_like(r["region_mask"])
    masked[:, 1] = True
    v, _ = model.embed_regions(images, r["boxes"], r["region_mask"], masked)
    spatial = spatial_encoding(r["boxes"][:, 1], 32)
    expected = model.ln_region(model.region_proj.bias + model.spatial_proj(spatial))
    torch.testing.assert_close(v[:, 1], expected)
    v0, _ = model.embed_regions(images, r["boxes"], r["region_mask"])
    torch.testing.assert_close(v[:, 2:], v0[:, 2:])  # the other regions are untouched


# ---- checkpoints -------------------------------------------------------------------------------


def test_save_and_load_round_trip(model, tok, test_data, tmp_path):
    images, scenes = test_data
    save_model(model, tmp_path / "v")
    again = load_model(ViLBERT, tmp_path / "v", device="cpu")
    torch.testing.assert_close(
        _forward(again, tok, images, scenes).itm_logits,
        _forward(model, tok, images, scenes).itm_logits,
    )


# ---- bad input ---------------------------------------------------------------------------------


def test_bad_regions_raise(model, tok, test_data):
    images, scenes = test_data
    r = regions_from_scenes(scenes)
    toks = tok([s["caption"] for s in scenes])
    boxes, mask = r["boxes"], r["region_mask"]
    with pytest.raises(ValueError, match=r"boxes must be \(B=4, R, 4\)"):
        model(toks, images, boxes[..., :3], region_mask=mask)
    with pytest.raises(ValueError, match="boxes is empty"):
        model(toks, images, boxes[:, :0], region_mask=mask[:, :0])
    with pytest.raises(ValueError, match="region_mask must be a bool tensor of the shape"):
        model(toks, images, boxes, region_mask=mask[:, :-1])
    with pytest.raises(ValueError, match="region_mask must be a bool tensor"):
        model(toks, images, boxes, region_mask=mask.long())
    with pytest.raises(ValueError, match="masked_regions must be a bool tensor of the shape"):
        model(toks, images, boxes, region_mask=mask, masked_regions=mask[:, :-1])
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(toks["input_ids"], images, boxes, attention_mask=toks["attention_mask"][:, :-1])
    with pytest.raises(ValueError, match="B as the images"):
        model(toks, images, boxes[:2], region_mask=mask[:2])
    with pytest.raises(ValueError, match="batch size"):
        model({k: v[:2] for k, v in toks.items()}, images, boxes, region_mask=mask)
    with pytest.raises(ValueError, match="non-empty 'objects'"):
        regions_from_scenes([{"objects": [], "image_size": 32}])
    k = max(len(s["objects"]) for s in scenes)
    with pytest.raises(ValueError, match=f"max_regions must be at least {k + 1}"):
        regions_from_scenes(scenes, max_regions=k)  # no room for [IMG]


def test_regions_without_a_mask_are_all_real(model, tok, test_data):
    images, scenes = test_data
    one = [s for s in scenes if len(s["objects"]) == max(len(x["objects"]) for x in scenes)][:1]
    r = regions_from_scenes(one)
    toks, image = tok([one[0]["caption"]]), images[[scenes.index(one[0])]]
    torch.testing.assert_close(
        model(toks, image, r["boxes"]).itm_logits,
        model(toks, image, r["boxes"], region_mask=r["region_mask"]).itm_logits,
    )


def test_bad_config_raises():
    with pytest.raises(ValueError, match="text_width=30 must be divisible by num_heads=4"):
        ViLBERT(ViLBERTConfig(text_width=30, num_heads=4))
    with pytest.raises(TypeError, match="config must be a ViLBERTConfig"):
        ViLBERT({"text_width": 32})

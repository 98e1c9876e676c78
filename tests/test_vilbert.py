"""ViLBERT and ViLT: regions, co-attention, pre-training targets, bad input, exercise checks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minimodels import shapeworld as sw
from minimodels.data.captions import hard_negative
from minimodels.layers import MultiHeadAttention, TransformerBlock
from minimodels.text import Tokenizer
from minimodels.vilbert import (
    IGNORE_INDEX,
    REGION_CLASSES,
    CoAttentionLayer,
    ViLBERT,
    ViLBERTConfig,
    box_masks,
    mask_tokens,
    pretraining_losses,
    region_class,
    regions_from_scenes,
    soft_region_targets,
    spatial_encoding,
    training_batch,
    vilbert_training_loss,
)
from minimodels.vilt import ViLT, ViLTConfig, vilt_training_loss

TINY = ViLBERTConfig(cnn_channels=16, text_width=32, vision_width=32, num_heads=4, bi_hidden=32)
TINY_VILT = ViLTConfig(width=32, layers=2, heads=4, patch_size=8)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ViLBERT(TINY).eval()


@pytest.fixture(scope="module")
def data():
    images, scenes = sw.generate("test", 4, seed=1)
    return torch.from_numpy(images).permute(0, 3, 1, 2), scenes


# ---- regions -----------------------------------------------------------------------------------


def test_regions_from_scenes_puts_img_first_and_pads(data):
    _, scenes = data
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


def test_region_features_are_box_means_of_the_feature_map(model, data):
    images, scenes = data
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


def test_forward_shapes_and_attention_maps(model, tok, data):
    images, scenes = data
    out = _forward(model, tok, images, scenes, output_attentions=True)
    L = tok([s["caption"] for s in scenes])["input_ids"].shape[1]
    R = 1 + max(len(s["objects"]) for s in scenes)
    assert out.text_hidden.shape == (4, L, 32) and out.region_hidden.shape == (4, R, 32)
    assert out.mlm_logits.shape == (4, L, len(tok)) and out.mrm_logits.shape == (4, R, 30)
    assert out.itm_logits.shape == (4, 2) and out.vqa_logits.shape == (4, len(sw.ANSWERS))
    assert len(out.attentions) == TINY.co_layers
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


def test_padding_regions_and_words_change_nothing(model, tok, data):
    images, scenes = data
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


def test_co_attention_exchanges_information_both_ways(model, tok, data):
    images, scenes = data
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


def test_masked_regions_keep_only_the_spatial_vector(model, data):
    images, scenes = data
    r = regions_from_scenes(scenes)
    masked = torch.zeros_like(r["region_mask"])
    masked[:, 1] = True
    v, _ = model.embed_regions(images, r["boxes"], r["region_mask"], masked)
    spatial = spatial_encoding(r["boxes"][:, 1], 32)
    expected = model.ln_region(model.region_proj.bias + model.spatial_proj(spatial))
    torch.testing.assert_close(v[:, 1], expected)
    v0, _ = model.embed_regions(images, r["boxes"], r["region_mask"])
    torch.testing.assert_close(v[:, 2:], v0[:, 2:])  # the other regions are untouched


# ---- pre-training targets ----------------------------------------------------------------------


def test_soft_region_targets_structure():
    labels = torch.tensor([region_class("red", "circle"), IGNORE_INDEX])
    p = soft_region_targets(labels, true_mass=0.8, similar_mass=0.15)
    assert p.shape == (2, 30)
    torch.testing.assert_close(p[0].sum(), torch.tensor(1.0))
    assert p[1].abs().sum() == 0
    assert p[0, region_class("red", "circle")].item() == pytest.approx(0.8)
    same = [region_class("red", s) for s in sw.SHAPES[1:]] + [
        region_class(c, "circle") for c in list(sw.COLORS)[1:]
    ]
    assert p[0, same].sum().item() == pytest.approx(0.15)
    assert p[0, region_class("blue", "cross")].item() == pytest.approx(0.05 / 20)
    # the KL loss is 0 exactly when the model predicts the detector's distribution
    assert F.kl_div(p[:1].log(), p[:1], reduction="batchmean").abs().item() < 1e-6
    with pytest.raises(ValueError, match="true_mass"):
        soft_region_targets(labels, true_mass=0.9, similar_mass=0.2)


def test_mask_tokens_masks_only_words_and_at_least_one(tok):
    batch = tok(["a red circle", "there are two shapes: a red circle on the left and a blue cross"])
    gen = torch.Generator().manual_seed(0)
    ids, labels = mask_tokens(
        batch["input_ids"], batch["attention_mask"], gen, p=0.15, at_least_one=True
    )
    chosen = labels != IGNORE_INDEX
    assert chosen.any(dim=1).all()  # at least one word per text
    assert (ids[chosen] == tok.mask_token_id).all()
    assert (labels[chosen] == batch["input_ids"][chosen]).all()
    assert not chosen[:, 0].any()  # never [CLS]
    assert not chosen[batch["attention_mask"] == 0].any()  # never padding
    big = tok(["a small red circle on the left and a large blue cross at the top"] * 400)
    _, lab = mask_tokens(big["input_ids"], big["attention_mask"], gen, p=0.15)
    rate = (lab != IGNORE_INDEX).float().sum() / (big["attention_mask"].sum() - 800)
    assert 0.12 < rate.item() < 0.19


def test_hard_negatives_are_false_and_close():
    rng = np.random.default_rng(0)
    scenes = sw.sample_scenes("test", 300, seed=2)
    kinds = set()
    for s in scenes:
        t = int(rng.integers(sw.NUM_TEMPLATES))
        neg, kind = hard_negative(s, t, rng)
        pos = sw.describe(s, template=t)
        kinds.add(kind)
        assert neg != pos
        assert len(neg.split()) == len(pos.split())  # same template, one attribute changed
        changed = [a for a, b in zip(pos.split(), neg.split()) if a != b]
        assert len(changed) == (2 if kind == "exchange" else 1), (pos, neg, kind)
        if kind == "exchange":
            assert sorted(pos.split()) == sorted(neg.split())  # same bag of words
        # the negative names a colour-shape pair that the scene does not contain
        pairs = {(o["color"], o["shape"]) for o in s["objects"]}
        words = neg.replace(",", "").split()
        named = {(a, b) for a, b in zip(words, words[1:]) if a in sw.COLORS and b in sw.SHAPES}
        assert named - pairs, (pos, neg)
    assert kinds == {"colour", "shape", "exchange"}


def test_training_batch_masks_every_pair_but_labels_only_aligned_ones(tok):
    b = training_batch(0, batch_size=64, seed=0, vqa=True)
    aligned = b["itm_labels"].bool()
    assert 0.3 < aligned.float().mean() < 0.7
    # [MASK] appears in aligned and negative captions alike: no shortcut for the alignment head
    has_mask = (b["input_ids"] == tok.mask_token_id).any(dim=1)
    assert has_mask[aligned].any() and has_mask[~aligned].any()
    assert b["masked_regions"][~aligned].any() and not b["masked_regions"][:, 0].any()
    # ... but only aligned pairs have targets
    assert not (b["mlm_labels"][~aligned] != IGNORE_INDEX).any()
    assert (
        (b["mlm_labels"] != IGNORE_INDEX)
        == (has_mask[:, None] & (b["input_ids"] == tok.mask_token_id) & aligned[:, None])
    ).all()
    assert ((b["region_labels"] != IGNORE_INDEX) == (b["masked_regions"] & aligned[:, None])).all()
    assert b["answers"].shape == (64,) and b["answers"].max() < len(sw.ANSWERS)


def test_tiny_training_run_decreases_the_loss():
    torch.manual_seed(0)
    m = ViLBERT(TINY)
    batch = training_batch(0, batch_size=32, seed=0, vqa=True)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = {k: v.item() for k, v in pretraining_losses(m, batch).items()}
    for _ in range(30):
        loss = vilbert_training_loss(m, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = {k: v.item() for k, v in pretraining_losses(m, batch).items()}
    assert set(first) == {"mlm", "mrm", "itm", "vqa"}
    assert all(last[k] < first[k] for k in ("mlm", "itm", "vqa")), (first, last)


def test_save_and_load_round_trip(model, tok, data, tmp_path):
    from minimodels.checkpoint import load_model, save_model

    images, scenes = data
    save_model(model, tmp_path / "v")
    again = load_model(ViLBERT, tmp_path / "v", device="cpu")
    torch.testing.assert_close(
        _forward(again, tok, images, scenes).itm_logits,
        _forward(model, tok, images, scenes).itm_logits,
    )


# ---- bad input ---------------------------------------------------------------------------------


def test_bad_regions_raise(model, tok, data):
    images, scenes = data
    r = regions_from_scenes(scenes)
    toks = tok([s["caption"] for s in scenes])
    boxes, mask = r["boxes"], r["region_mask"]
    with pytest.raises(ValueError, match=r"boxes must have shape \(B, R, 4\)"):
        model(toks, images, boxes[..., :3], region_mask=mask)
    outside = boxes.clone()
    outside[0, 1] = torch.tensor([20.0, 20.0, 40.0, 30.0])
    with pytest.raises(ValueError, match=r"boxes\[0, 1\].*not a box inside"):
        model(toks, images, outside, region_mask=mask)
    flipped = boxes.clone()
    flipped[1, 1] = flipped[1, 1, [2, 3, 0, 1]]
    with pytest.raises(ValueError, match="not a box inside"):
        model(toks, images, flipped, region_mask=mask)
    with pytest.raises(ValueError, match="empty region list"):
        model(toks, images, boxes, region_mask=torch.zeros_like(mask))
    with pytest.raises(ValueError, match="R = 0"):
        model(toks, images, boxes[:, :0], region_mask=mask[:, :0])
    with pytest.raises(ValueError, match="region_mask must have the shape"):
        model(toks, images, boxes, region_mask=mask[:, :-1])
    with pytest.raises(ValueError, match="masked_regions must have shape"):
        model(toks, images, boxes, region_mask=mask, masked_regions=mask[:, :-1])
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(toks["input_ids"], images, boxes, attention_mask=toks["attention_mask"][:, :-1])
    with pytest.raises(ValueError, match="batch size"):
        model(toks, images, boxes[:2], region_mask=mask[:2])
    with pytest.raises(ValueError, match="no objects"):
        regions_from_scenes([{"objects": [], "image_size": 32}])
    with pytest.raises(TypeError, match="region_mask must be a bool"):
        model(toks, images, boxes, region_mask=mask.long())


def test_bad_config_raises():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ViLBERTConfig(text_width=30, num_heads=4)
    with pytest.raises(ValueError, match="co_layers"):
        ViLBERTConfig(co_layers=0)


# ---- ViLT --------------------------------------------------------------------------------------


def test_vilt_single_stream(tok, data):
    images, scenes = data
    torch.manual_seed(0)
    m = ViLT(TINY_VILT).eval()
    toks = tok([s["caption"] for s in scenes])
    out = m(toks, images, output_attentions=True)
    L, N = toks["input_ids"].shape[1], (32 // 8) ** 2
    assert out.hidden.shape == (4, L + N, 32) and out.itm_logits.shape == (4, 2)
    assert out.mlm_logits.shape == (4, L, len(tok))
    assert out.attentions[0].shape == (4, 4, L + N, L + N)
    # one stream: words attend to patches in the very first layer
    assert out.attentions[0][:, :, :L, L:].sum() > 0
    # padding words get no attention
    pad = toks["attention_mask"] == 0
    assert (out.attentions[0][:, :, :, :L] * pad[:, None, None, :]).abs().max() == 0
    with pytest.raises(ValueError, match="batch size"):
        m(toks, images[:2])
    batch = training_batch(0, batch_size=8, seed=0)
    assert torch.isfinite(vilt_training_loss(m, batch))


# ---- the shipped weights -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_metrics():
    from minimodels.vilbert import evaluate_vilbert, load_pretrained

    return evaluate_vilbert(load_pretrained(device="cpu"), seed=12345, n=300)


def test_shipped_vilbert_meets_the_issue_bars_on_a_fresh_seed(shipped_metrics):
    # issue 6's bars (measured at --n 1000 on seeds 0 and 1: 0.938/0.945, 0.973/0.977,
    # 0.958/0.960); a seed the training never saw, n = 300
    m = shipped_metrics
    assert m["itm_acc_random"] >= 0.95, m  # random negatives
    assert m["itm_acc_hard"] >= 0.90, m  # one attribute swapped or two colours exchanged
    assert m["mlm_acc"] >= 0.90, m  # masked colour/shape words: 1/11 by chance
    assert m["vqa_acc"] >= 0.85, m

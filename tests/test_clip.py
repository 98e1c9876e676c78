"""CLIP (the model file): shapes, the temperature, the loss against open_clip's, zero-shot and
retrieval maths, checks at the entry points. Training and the shipped weights:
tests/test_recipes_clip.py."""

import math

import pytest
import tiny
import torch
import torch.nn.functional as F

from minimodels import shapeworld as sw
from minimodels.checkpoint import load_model, save_model
from minimodels.clip import (
    CLIP,
    LOGIT_SCALE_INIT,
    CLIPConfig,
    clip_loss,
    recall_at_k,
    text_inputs,
    zero_shot_classifier,
    zero_shot_predict,
)
from minimodels.data.images import to_tensor


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CLIP(tiny.CLIP).eval()


@pytest.fixture(scope="module")
def batch():
    images, scenes = sw.generate("test", 5, seed=1)
    return to_tensor(images), [s["caption"] for s in scenes]


# ---- shapes and the API ----------------------------------------------------------------------


def test_shapes_and_forward_match_open_clip_api(model, tok, batch):
    images, captions = batch
    tokens = tok(captions[:3])
    assert model.encode_image(images).shape == (5, 16)
    assert model.encode_text(tokens).shape == (3, 16)
    assert model.encode_text(tokens["input_ids"]).shape == (3, 16)
    logits_per_image, logits_per_text = model(images, tokens)
    assert logits_per_image.shape == (5, 3) and logits_per_text.shape == (3, 5)
    torch.testing.assert_close(logits_per_text, logits_per_image.T)
    # logits = np.dot(I_e, T_e.T) * np.exp(t)
    expected = (
        model.encode_image(images, normalize=True)
        @ model.encode_text(tokens, normalize=True).T
        * math.exp(LOGIT_SCALE_INIT)
    )
    torch.testing.assert_close(logits_per_image, expected, rtol=1e-5, atol=1e-5)


def test_normalize_gives_unit_norms(model, tok, batch):
    images, captions = batch
    for emb in (model.encode_image(images, normalize=True), model.encode_text(tok(captions), True)):
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(emb)))
    assert not torch.allclose(model.encode_image(images).norm(dim=-1), torch.ones(5))


def test_uint8_and_float_images_agree(model, batch):
    images, _ = batch
    torch.testing.assert_close(model.encode_image(images), model.encode_image(images / 255.0))


def test_padding_does_not_change_a_text_embedding(model, tok):
    short, long = "a red circle", "there are two shapes: a red circle on the left and a blue cross"
    alone = model.encode_text(tok([short]))
    padded = tok([short, long])  # the short text is padded to the long one's length
    assert padded["attention_mask"][0].eq(0).any()
    torch.testing.assert_close(model.encode_text(padded)[:1], alone, rtol=1e-5, atol=1e-5)


def test_encode_image_features_gives_patch_grid(model, batch):
    images, _ = batch
    n = (tiny.CLIP.image_size // tiny.CLIP.patch_size) ** 2
    last = model.encode_image_features(images)
    assert last.shape == (5, n, tiny.CLIP.vision_width)  # no [CLS]
    torch.testing.assert_close(model.encode_image_features(images, layer=1), last)
    assert not torch.allclose(model.encode_image_features(images, layer=-2), last)
    with pytest.raises(ValueError, match="layer"):
        model.encode_image_features(images, layer=2)


# ---- the temperature -------------------------------------------------------------------------


def test_logit_scale_init_and_clamp():
    m = CLIP(tiny.CLIP)
    assert m.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert m.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        m.logit_scale.fill_(10.0)  # exp(10) ≈ 22026
    assert m.scale().item() == pytest.approx(100.0, rel=1e-5)  # clamped in use
    m.clamp_logit_scale_()
    assert m.logit_scale.item() == pytest.approx(math.log(100.0))
    with torch.no_grad():
        m.logit_scale.fill_(-3.0)
    m.clamp_logit_scale_()
    assert m.logit_scale.item() == 0.0  # exp(t) >= 1


# ---- the loss --------------------------------------------------------------------------------


def open_clip_loss(image_features, text_features, logit_scale):
    """The arithmetic of open_clip's `ClipLoss.forward` (src/open_clip/loss.py, world_size=1),
    copied here as the reference: open_clip_torch 3.3.0 downloads (`pip download --no-deps
    open_clip_torch`) but does not import beside this torch (it needs torchvision)."""
    logits_per_image = logit_scale * image_features @ text_features.T
    logits_per_text = logit_scale * text_features @ image_features.T
    labels = torch.arange(logits_per_image.shape[0], dtype=torch.long)
    return (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    ) / 2


@pytest.mark.parametrize("n, d, scale", [(2, 8, 1.0), (7, 16, 1 / 0.07), (64, 32, 100.0)])
def test_clip_loss_equals_open_clip(n, d, scale):
    g = torch.Generator().manual_seed(n)
    image = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(image + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    ours = clip_loss(image, text, scale)
    ref = open_clip_loss(image, text, scale)
    assert abs(ours.item() - ref.item()) < 1e-6
    ours32 = clip_loss(image.float(), text.float(), torch.tensor(scale))  # tensor scale, float32
    assert abs(ours32.item() - ref.item()) < 1e-5


def test_clip_loss_is_log_n_for_random_and_zero_for_aligned():
    n = 32
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(n, 4096, generator=g), dim=-1)
    text = F.normalize(torch.randn(n, 4096, generator=g), dim=-1)
    assert clip_loss(image, text, 1.0).item() == pytest.approx(math.log(n), abs=0.02)
    aligned = torch.eye(n, 48)  # orthonormal rows, each its own pair
    assert clip_loss(aligned, aligned.clone(), 100.0).item() < 1e-6


# ---- zero-shot classification and retrieval --------------------------------------------------


def test_zero_shot_classifier_is_mean_of_normalised_templates(model, tok):
    classnames = ["red circle", "blue cross", "green square"]
    templates = ["a {}", "a photo of a {}", "there is a {} on the left"]
    classifier = zero_shot_classifier(model, tok, classnames, templates)
    assert classifier.shape == (tiny.CLIP.embed_dim, 3)
    for c, name in enumerate(classnames):
        # one prompt at a time (no padding): normalise each, average, normalise again
        embs = [model.encode_text(tok([t.format(name)]), normalize=True)[0] for t in templates]
        mean = torch.stack(embs).mean(0)
        torch.testing.assert_close(classifier[:, c], mean / mean.norm(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="classnames"):
        zero_shot_classifier(model, tok, [], templates)
    with pytest.raises(ValueError, match="template"):
        zero_shot_classifier(model, tok, classnames, ["no slot here"])


def test_zero_shot_predict_is_argmax_of_cosine(model, tok, batch):
    images, _ = batch
    classifier = zero_shot_classifier(model, tok, ["red circle", "blue cross"], ["a {}"])
    pred = zero_shot_predict(model, images, classifier)
    expected = (model.encode_image(images, normalize=True) @ classifier).argmax(-1)
    assert torch.equal(pred, expected)
    with pytest.raises(ValueError, match="classifier"):
        zero_shot_predict(model, images, classifier.T)


def test_recall_at_k_on_hand_built_embeddings():
    e = torch.eye(4)
    captions = ["a", "b", "a", "c"]  # items 0 and 2 share a caption
    image = e.clone()
    # text 0 is closest to image 2 (same caption "a": a hit); text 1 to image 3 (miss);
    # text 2 to image 2 (hit); text 3 to image 3 (hit); second choices as written
    text = torch.tensor(
        [
            [0.5, 0.0, 1.0, 0.0],  # best image 2 (hit), then 0
            [0.0, 0.5, 0.0, 1.0],  # best image 3 (miss), then 1 (hit at k=2)
            [0.0, 0.0, 1.0, 0.0],  # image 2 (hit)
            [0.0, 0.0, 0.0, 1.0],  # image 3 (hit)
        ]
    )
    r1 = recall_at_k(image, text, captions, k=1)
    assert r1["t2i"] == pytest.approx(3 / 4)
    # image -> text: image 0's best text is 0 (0.5) vs 2 (0.0 ... ) -- compute by hand:
    # sim = image @ normalised text.T; image 0 -> text 0 (0.447): hit; image 1 -> text 1 (0.447):
    # hit; image 2 -> text 2 (1.0): hit; image 3 -> text 3 (1.0): hit
    assert r1["i2t"] == pytest.approx(1.0)
    assert recall_at_k(image, text, captions, k=2)["t2i"] == pytest.approx(1.0)
    # swapping the roles of the two modalities swaps the two recalls
    assert recall_at_k(text, image, captions, k=1) == pytest.approx({"t2i": 1.0, "i2t": 0.75})
    # a retrieved item with the same caption counts even if it is not the query's own pair
    swapped = recall_at_k(image, image[[2, 1, 0, 3]], captions, k=1)
    assert swapped == {"t2i": 1.0, "i2t": 1.0}
    with pytest.raises(ValueError, match="k must"):
        recall_at_k(image, text, captions, k=5)
    with pytest.raises(ValueError, match="same length"):
        recall_at_k(image, text, captions[:3], k=1)


# ---- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "images, error, match",
    [
        (torch.zeros(3, 32, 32, dtype=torch.uint8), ValueError, "images must have 4 dim"),
        (torch.zeros(2, 32, 32, 3, dtype=torch.uint8), ValueError, "channels-last"),
        (torch.zeros(2, 1, 32, 32), ValueError, "3 channels"),
        (torch.zeros(2, 3, 28, 28), ValueError, "32×32"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.int32), TypeError, "uint8"),
        (torch.full((2, 3, 32, 32), float("nan")), ValueError, "(?i)nan"),
        (torch.full((2, 3, 32, 32), 255.0), ValueError, r"\[0, 1\]"),
        ([[0.0]], TypeError, "images must be a torch.Tensor"),
    ],
)
def test_bad_images_raise(model, images, error, match):
    with pytest.raises(error, match=match):
        model.encode_image(images)


def test_bad_tokens_raise(model, tok):
    ids = tok(["a red circle"])["input_ids"]
    with pytest.raises(ValueError, match="vocab_size"):
        model.encode_text(torch.tensor([[2, tiny.CLIP.vocab_size, 3]]))
    with pytest.raises(ValueError, match="vocab_size"):
        model.encode_text(torch.tensor([[2, -1, 3]]))
    with pytest.raises(TypeError, match="tokens must be an integer tensor"):
        model.encode_text(ids.float())
    with pytest.raises(ValueError, match=r"tokens must have 2 dimensions \(B, L\)"):
        model.encode_text(ids[0])
    with pytest.raises(ValueError, match="max_length=40"):
        model.encode_text(torch.full((1, tiny.CLIP.context_length + 1), 10))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model.encode_text(ids, attention_mask=torch.ones(1, 2))
    with pytest.raises(TypeError, match="tokens must be"):
        model.encode_text("a red circle")


def test_text_inputs_reads_the_tokenizer_dict_and_masks_padding(tok):
    batch = tok(["a red circle", "a red circle and a blue cross"])
    c = tiny.CLIP
    ids, keep = text_inputs(batch, None, c.vocab_size, c.context_length, tok.pad_token_id)
    assert torch.equal(ids, batch["input_ids"]) and torch.equal(
        keep, batch["attention_mask"].bool()
    )
    _, from_pad = text_inputs(batch["input_ids"], None, c.vocab_size, c.context_length,
                              tok.pad_token_id)  # fmt: skip
    assert torch.equal(from_pad, keep)  # no mask given: [PAD] ids are left out
    mask = torch.ones_like(batch["attention_mask"])
    _, given = text_inputs(batch, mask, c.vocab_size, c.context_length, tok.pad_token_id)
    assert given.all()  # an explicit attention_mask wins over the dict's


def test_bad_clip_loss_inputs_raise():
    x = F.normalize(torch.randn(4, 8), dim=-1)
    with pytest.raises(ValueError, match="same n and E"):
        clip_loss(x, x[:3], 10.0)
    with pytest.raises(ValueError, match="same n and E"):
        clip_loss(x, x[:, :4], 10.0)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="image_size=30 must be divisible by patch_size=4"):
        CLIP(CLIPConfig(image_size=30, patch_size=4))
    with pytest.raises(ValueError, match="text_width=30 must be divisible by text_heads=4"):
        CLIP(CLIPConfig(text_width=30, text_heads=4))
    with pytest.raises(TypeError, match="config must be a CLIPConfig"):
        CLIP({"image_size": 32})


# ---- checkpoints -----------------------------------------------------------------------------


def test_save_and_load_round_trip(model, batch, tmp_path):
    images, _ = batch
    save_model(model, tmp_path / "clip")
    loaded = load_model(CLIP, tmp_path / "clip", device="cpu")
    torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images))

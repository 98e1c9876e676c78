"""LLaVA: the projector, the <image> merge against transformers' LLaVA, the processor and its
labels, pooling, bad input, and where the image reaches the loss. (Training, evaluation and
the shipped models: tests/test_recipes_llava.py.)"""

import dataclasses

import pytest
import tiny
import torch

from minimodels import shapeworld as sw
from minimodels.data.images import to_tensor
from minimodels.llava import (
    IGNORE_INDEX,
    TOKENIZER,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProjector,
    merge_image_features,
)


@pytest.fixture(scope="module")
def data():
    images, scenes = sw.generate("test", 4, seed=2)
    return to_tensor(images), scenes


# ---- the merge, against transformers -----------------------------------------------------


def test_merge_matches_transformers_llava():
    tf = pytest.importorskip("transformers")
    vc = tf.CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=8,
        patch_size=4,
    )
    tc = tf.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=40,
    )
    config = tf.LlavaConfig(
        vision_config=vc,
        text_config=tc,
        image_token_id=7,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    hf = tf.LlavaForConditionalGeneration(config).eval()  # fmt: skip
    captured = {}
    hf.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: captured.update(e=kwargs["inputs_embeds"].clone()),
        with_kwargs=True,
    )
    # two rows, three images of 4 patches each; row 0 holds two images
    ids = torch.tensor([[1, 7, 7, 7, 7, 3, 7, 7, 7, 7, 4], [2, 3, 7, 7, 7, 7, 5, 6, 8, 9, 10]])
    pixel_values = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        hf(input_ids=ids, pixel_values=pixel_values)
        out = hf.model.get_image_features(
            pixel_values=pixel_values, vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )  # fmt: skip
        features = torch.stack(list(out.pooler_output))  # (3, 4, 16): [CLS] dropped, projected
        ours = merge_image_features(hf.get_input_embeddings()(ids), ids, features, 7)
    torch.testing.assert_close(ours, captured["e"], rtol=0, atol=0)
    # and one feature too few is refused, by both
    with pytest.raises(ValueError, match="do not match"):
        merge_image_features(hf.get_input_embeddings()(ids), ids, features[:, :3], 7)


def test_merge_fills_in_reading_order_and_leaves_text_alone():
    emb = torch.zeros(2, 4, 3)
    ids = torch.tensor([[5, 9, 9, 5], [9, 9, 5, 5]])
    feats = torch.arange(12.0).view(2, 2, 3)  # image 0: rows 0-1, image 1: rows 2-3
    out = merge_image_features(emb, ids, feats, image_token_id=9)
    torch.testing.assert_close(out[0, 1:3], feats[0])
    torch.testing.assert_close(out[1, 0:2], feats[1])
    assert out[ids == 5].abs().sum() == 0 and emb.abs().sum() == 0  # input untouched
    with pytest.raises(ValueError, match="width"):
        merge_image_features(emb, ids, torch.zeros(2, 2, 4), 9)
    with pytest.raises(ValueError, match="do not match: 4 tokens .* 6 features"):
        merge_image_features(emb, ids, torch.zeros(3, 2, 3), 9)


# ---- projector, processor, labels ----------------------------------------------------------


def test_projector_linear_is_w_z_and_mlp_is_two_layers():
    torch.manual_seed(0)
    z = torch.randn(2, 5, 8)
    lin = LlavaProjector(8, 12, kind="linear")
    torch.testing.assert_close(lin(z), z @ lin.linear_1.weight.T + lin.linear_1.bias)
    mlp = LlavaProjector(8, 12, kind="mlp")
    expected = mlp.linear_2(torch.nn.functional.gelu(mlp.linear_1(z)))
    torch.testing.assert_close(mlp(z), expected)
    assert mlp(z).shape == (2, 5, 12)
    with pytest.raises(ValueError, match="kind"):
        LlavaProjector(8, 12, kind="conv")


def test_pool_modes_average_or_concatenate_neighbouring_patches(data):
    images, _ = data
    torch.manual_seed(0)
    avg = LlavaForConditionalGeneration(tiny.LLAVA).eval()
    cat = LlavaForConditionalGeneration(
        dataclasses.replace(tiny.LLAVA, pool_mode="unshuffle")
    ).eval()
    cat.vision_tower.load_state_dict(avg.vision_tower.state_dict())
    D, g = tiny.LLAVA.vision_config.vision_width, 32 // 4  # 8×8 patches, pooled 2×2 -> 4×4 tokens
    with torch.no_grad():
        z = avg.vision_tower.encode_image_features(images, -2)  # (B, 64, D), row-major
    grid = z.view(len(images), g, g, D)
    block = grid[:, 2:4, 4:6]  # the 2×2 block of token (row 1, column 2) = token 6
    za, zc = avg.vision_features(images), cat.vision_features(images)
    assert za.shape == (4, 16, D) and zc.shape == (4, 16, 4 * D)
    assert cat.multi_modal_projector.vision_dim == 4 * D == cat.config.vision_feature_dim
    torch.testing.assert_close(za[:, 6], block.mean((1, 2)))
    # pixel unshuffle keeps every number: channel d of patch (i, j) sits at d·4 + 2i + j
    torch.testing.assert_close(zc[:, 6].view(-1, D, 2, 2), block.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="pool_mode"):
        LlavaForConditionalGeneration(LlavaConfig(pool_mode="max"))
    with pytest.raises(ValueError, match="pool=3 must divide the grid of 16×16"):
        LlavaForConditionalGeneration(LlavaConfig(pool=3))


def test_processor_expands_image_and_labels_only_answers(tiny_llava, data):
    images, _ = data
    proc = tiny_llava.processor
    n = tiny.LLAVA.num_image_tokens
    inputs = proc(["<bos> user: <image> what color is the circle? assistant:"], images[:1])
    assert int((inputs["input_ids"] == TOKENIZER.image_token_id).sum()) == n
    ids, labels = proc.conversation([("how many shapes are there?", "two"), ("and red?", "one")])
    ids, labels = torch.tensor(ids), torch.tensor(labels)
    assert (labels[ids == TOKENIZER.image_token_id] == IGNORE_INDEX).all()
    trained = TOKENIZER.decode(labels[labels != IGNORE_INDEX], skip_special_tokens=False)
    assert trained == "two <eos> one <eos>"
    batch = proc.training_batch([[("q?", "yes")], [("a longer question?", "no")]])
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


@pytest.mark.parametrize(
    "prompt, words",
    [
        ("what color is the circle?", "exactly one <image>"),
        ("<image> <image> what color?", "exactly one <image>"),
        ("  ", "empty"),
        ("<image>", "empty"),
    ],
)
def test_generate_rejects_bad_prompts(tiny_llava, data, prompt, words):
    with pytest.raises(ValueError, match=words):
        tiny_llava.generate(data[0][:1], [prompt])


def test_generate_rejects_bad_images_and_lengths(tiny_llava, data):
    images, _ = data
    with pytest.raises(ValueError, match="32×32"):
        tiny_llava.generate(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), ["<image> what?"])
    with pytest.raises(ValueError, match="one image per prompt"):
        tiny_llava.generate(images[:2], ["<image> what?"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_llava.generate(images[:1], ["<image> what?"], max_new_tokens=0)
    with pytest.raises(ValueError, match="labels must have the shape"):
        tiny_llava(torch.tensor([[5, 6]]), labels=torch.tensor([[5]]))
    with pytest.raises(TypeError, match="input_ids"):
        tiny_llava([[5, 6]])
    with pytest.raises(ValueError, match="<image> tokens but no pixel_values"):
        tiny_llava(torch.tensor([[TOKENIZER.image_token_id, 5]]))


def test_image_reaches_the_loss_only_through_the_projector(tiny_llava, data):
    images, scenes = data
    batch = tiny_llava.processor.training_batch(
        [[("what is it?", s["caption"])] for s in scenes[:2]]
    )
    tiny_llava.language_model.requires_grad_(False)  # stage 1: the projector alone trains
    loss = tiny_llava(**batch, pixel_values=images[:2]).loss
    other = tiny_llava(**batch, pixel_values=images[2:4]).loss
    assert loss.item() != other.item()  # the answer's likelihood depends on the image
    loss.backward()
    assert tiny_llava.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_llava.language_model.parameters())
    tiny_llava.zero_grad(set_to_none=True)
    tiny_llava.language_model.requires_grad_(True)

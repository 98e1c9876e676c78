"""LLaVA's recipe: which parameters each stage trains, the stage-2 mixture and the instruction
data, the feature bank, a short run of both stages, and the shipped models answering with and
without the image."""

import numpy as np
import pytest
import tiny
import torch

import minimodels
from minimodels import shapeworld as sw
from minimodels.data import instructions
from minimodels.data.images import to_tensor
from minimodels.llava import TOKENIZER
from minimodels.recipes.llava import (
    STAGE2_MIX,
    FeatureBank,
    answer_blind,
    count_trainable,
    evaluate_llava,
    evaluation_set,
    load_blind,
    pairs_in_text,
    set_stage,
    stage2_maker,
    train_llava,
    vqa_accuracy,
)

# ---- training ------------------------------------------------------------------------------


def test_stages_train_the_right_parameters(tiny_llava):
    proj = sum(p.numel() for p in tiny_llava.multi_modal_projector.parameters())
    lm = sum(p.numel() for p in tiny_llava.language_model.parameters())
    set_stage(tiny_llava, 1)
    assert count_trainable(tiny_llava) == proj
    set_stage(tiny_llava, 2)
    assert count_trainable(tiny_llava) == proj + lm
    assert not any(p.requires_grad for p in tiny_llava.vision_tower.parameters())
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        set_stage(tiny_llava, 3)


def test_feature_bank_holds_the_frozen_features_of_its_scenes(tiny_llava):
    bank = FeatureBank(tiny_llava, n=12, seed=1)
    images = to_tensor(sw.render(bank.scenes[:3], 32))
    torch.testing.assert_close(bank.features[:3], tiny_llava.vision_features(images))
    batch = bank.batch(tiny_llava, step=0, batch_size=4, make=instructions.stage1_data, seed=1)
    n_image = (batch["input_ids"] == TOKENIZER.image_token_id).sum(1)
    assert (n_image == tiny.LLAVA.num_image_tokens).all()  # one <image> per row, expanded to N
    assert batch["vision_features"].shape == (4, tiny.LLAVA.num_image_tokens, 16)
    assert tiny_llava(**batch).loss.isfinite()
    blind = bank.batch(tiny_llava, 0, 4, instructions.conversation, seed=1, with_image=False)
    assert "vision_features" not in blind and (blind["input_ids"] != TOKENIZER.image_token_id).all()


def test_stage2_draws_each_kind_of_data_as_often_as_the_mix_says():
    scene = sw.sample_scenes("train", 1, seed=0)[0]
    rng = np.random.default_rng(0)
    prompts = [stage2_maker(scene, rng)[0][0] for _ in range(400)]
    detailed = np.mean([p in instructions.DETAIL_PROMPTS for p in prompts])
    assert abs(detailed - STAGE2_MIX["detailed description"]) < 0.06
    assert abs(sum(STAGE2_MIX.values()) - 1) < 1e-9


def test_a_short_run_trains_the_projector_then_the_lm_never_the_tower():
    clip, gpt = minimodels.pretrained("clip"), minimodels.pretrained("gpt")
    model, stage1, blind, history = train_llava(
        stage1_steps=3, stage2_steps=4, blind_steps=2, batch_size=4, n_scenes=16, progress=False
    )
    assert len(history) == 4 and all(np.isfinite(history))
    for m in (model, stage1):
        for name, p in clip.state_dict().items():
            assert torch.equal(m.vision_tower.state_dict()[name], p), name  # CLIP: frozen
    same = [torch.equal(a, b) for a, b in zip(stage1.language_model.parameters(),
                                              gpt.parameters())]  # fmt: skip
    assert all(same)  # stage 1: the LM is frozen too
    moved = [not torch.equal(a, b) for a, b in zip(model.language_model.parameters(),
                                                   gpt.parameters())]  # fmt: skip
    assert any(moved)  # stage 2: the LM learns
    assert not torch.equal(stage1.multi_modal_projector.linear_1.weight,
                           model.multi_modal_projector.linear_1.weight)  # fmt: skip
    assert any(not torch.equal(a, b) for a, b in zip(blind.parameters(), gpt.parameters()))


# ---- evaluation and the shipped models -----------------------------------------------------


def test_pairs_in_text_reads_colour_shape_pairs():
    assert pairs_in_text("a small red circle on the left, a large blue cross") == {
        ("red", "circle"),
        ("blue", "cross"),
    }


def test_evaluation_set_is_one_question_per_test_scene():
    images, scenes, qa = evaluation_set(seed=4, n=5)
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.uint8
    assert [s["caption"] for s in scenes] == [s["caption"] for s in sw.generate("test", 5, 4)[1]]
    assert all(q in s["questions"] and a == s["answers"][s["questions"].index(q)]
               for (q, a), s in zip(qa, scenes))  # fmt: skip


def test_shipped_llava_sees_the_image_and_the_blind_lm_does_not():
    model = minimodels.pretrained("llava")
    blind = load_blind()
    images, scenes, qa = evaluation_set(seed=123, n=120)
    acc = vqa_accuracy(model, images, qa)
    blind_answers = answer_blind(blind, [q for q, _ in qa])
    blind_acc = float(np.mean([a == g for a, (_, g) in zip(blind_answers, qa)]))
    assert acc > blind_acc + 0.05, (acc, blind_acc)
    # colour questions cannot be answered without looking: the blind LM can only guess
    keep = [
        i for i, s in enumerate(scenes) if any(q.startswith("what color") for q in s["questions"])
    ]
    color_qa = [
        next((q, a) for q, a in zip(scenes[i]["questions"], scenes[i]["answers"])
             if q.startswith("what color"))
        for i in keep[:60]
    ]  # fmt: skip
    color_acc = vqa_accuracy(model, images[keep[:60]], color_qa)
    blind_color = answer_blind(blind, [q for q, _ in color_qa])
    blind_color_acc = float(np.mean([a == g for a, (_, g) in zip(blind_color, color_qa)]))
    assert color_acc >= 0.6 and blind_color_acc <= 0.4, (color_acc, blind_color_acc)
    prompt = ["<image> describe the image in detail."] * 2
    s1 = model.generate(images[:2], prompt, do_sample=True, temperature=1.0, seed=3)
    s2 = model.generate(images[:2], prompt, do_sample=True, temperature=1.0, seed=3)
    assert s1 == s2  # sampling is repeatable with a seed


def test_evaluate_llava_reports_every_figure():
    figures = evaluate_llava(seed=2, n=40)
    assert set(figures) == {"vqa_acc", "blind_vqa_acc", "stage1_only_vqa_acc",
                            "caption_attr_acc", "n"}  # fmt: skip
    assert figures["n"] == 40 and all(0 <= v <= 1 for k, v in figures.items() if k != "n")
    assert figures["vqa_acc"] > figures["stage1_only_vqa_acc"]  # stage 1 captions, never answers

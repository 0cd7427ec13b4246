"""ObjectMaskCollator: TRL's vision collator plus an `object_masks` column reaching the processor."""

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessor
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from delta_llava.processing import DeltaLlavaProcessor
from delta_llava.training.local_tokenizer import build_word_level_tokenizer
from delta_llava.training.object_mask_collator import ObjectMaskCollator
from delta_llava.training.synthetic_vqa import make_synthetic_vqa, word_vocabulary

IMAGE_SIZE, MASK_SIZE, BUDGET = 32, 8, 4
MASK_COUNTS = [3, 1, 5, 2]  # masks per row's image, all non-empty


@pytest.fixture(scope="module")
def processor():
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    tokenizer = build_word_level_tokenizer(word_vocabulary(3))
    return DeltaLlavaProcessor(
        image_processor, tokenizer, num_visual_tokens=BUDGET, use_object_tokens=True, max_object_tokens=8,
        mask_size=MASK_SIZE,
    )  # fmt: skip


def examples(with_masks: bool) -> list[dict]:
    rows = [dict(row) for row in make_synthetic_vqa(len(MASK_COUNTS), seed=0, image_size=IMAGE_SIZE)]
    if with_masks:
        rng = np.random.default_rng(0)
        for row, count in zip(rows, MASK_COUNTS):
            stack = (rng.random((count, MASK_SIZE, MASK_SIZE)) > 0.5).astype(np.uint8) * 255
            stack[:, 0, 0] = 255  # never empty
            row["object_masks"] = [stack.tolist()]  # per row, one stack per image, as stored by `datasets`
    return rows


def test_without_the_column_it_is_trls_collator(processor):
    ours = ObjectMaskCollator(processor, assistant_only_loss=True)(examples(with_masks=False))
    theirs = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)(examples(with_masks=False))
    assert ours.keys() == theirs.keys() and "object_masks" not in ours
    for key in theirs:
        same = torch.equal(ours[key], theirs[key]) if torch.is_tensor(theirs[key]) else ours[key] == theirs[key]
        assert same, key


def test_masks_reach_the_batch_and_expand_the_placeholders(processor):
    collator = ObjectMaskCollator(processor, assistant_only_loss=True)
    batch = collator(examples(with_masks=True))
    assert batch["object_masks"].shape == (len(MASK_COUNTS), max(MASK_COUNTS), MASK_SIZE, MASK_SIZE)
    placeholders = (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert placeholders == [BUDGET + count for count in MASK_COUNTS]
    assert (batch["labels"] != -100).any(dim=1).all()  # the answers still carry the loss
    assert collator.processor is processor and "apply_chat_template" not in vars(processor)


def test_trls_collator_alone_drops_the_masks(processor):
    batch = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)(examples(with_masks=True))
    assert "object_masks" not in batch
    assert (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist() == [BUDGET] * len(MASK_COUNTS)


def test_one_stack_per_image_is_checked(processor):
    rows = examples(with_masks=True)
    rows[0]["object_masks"] = rows[0]["object_masks"] * 2  # two stacks for one image
    with pytest.raises(ValueError, match="one .* stack per image"):
        ObjectMaskCollator(processor, assistant_only_loss=True)(rows)


def test_embeddings_reach_the_batch_and_expand_the_placeholders(processor):
    rows = examples(with_masks=False)
    rng = np.random.default_rng(1)
    for row, count in zip(rows, MASK_COUNTS):
        row["object_embeddings"] = [rng.standard_normal((count, 6)).astype(np.float32).tolist()]
    batch = ObjectMaskCollator(processor, assistant_only_loss=True)([dict(row) for row in rows])
    assert "object_masks" not in batch and batch["object_embeddings"].shape == (len(MASK_COUNTS), max(MASK_COUNTS), 6)
    torch.testing.assert_close(batch["object_embeddings"][0, : MASK_COUNTS[0]], torch.tensor(rows[0]["object_embeddings"][0]))
    assert (batch["object_embeddings"][1, MASK_COUNTS[1] :] == 0).all()  # zero padding after each image's objects
    placeholders = (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert placeholders == [BUDGET + count for count in MASK_COUNTS]
    both = [dict(row, object_masks=[[[[255]]]]) for row in rows]
    with pytest.raises(ValueError, match="both object_masks and object_embeddings"):
        ObjectMaskCollator(processor, assistant_only_loss=True)(both)

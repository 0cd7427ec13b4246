"""Generate answers on a VQA split at a chosen token budget and score them per question type."""

import numpy as np
import torch
from tqdm.auto import tqdm

from .object_mask_collator import OBJECT_COLUMNS
from .vqa_metrics import score_predictions


def user_turn(messages: list[dict]) -> list[dict]:
    """The conversation up to (not including) the first assistant answer."""
    end = next(i for i, message in enumerate(messages) if message["role"] == "assistant")
    return messages[:end]


@torch.inference_mode()
def generate_answers(
    model,
    processor,
    dataset,
    num_visual_tokens: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    desc: str = "generating",
    max_object_tokens: int | None = None,
    batch_by_question: bool = False,
) -> list[str]:
    """
    Greedy answers for every row of an `images` + `messages` dataset, in order. With an `object_masks` column (per
    row, one mask stack per image) or an `object_embeddings` column (their MaskInversion embeddings, one (K, E) array
    per image) the images also get up to `max_object_tokens` object tokens (default: the
    processor's). `batch_by_question` batches rows sorted by their question's text (answers still come back in row
    order): questions of a kind then share a batch, so a batch of short answers stops generating early instead of
    waiting for a caption beside it.
    """
    model.eval()
    prompts_by_row = [user_turn(messages) for messages in dataset["messages"]]
    order = list(range(len(dataset)))
    if batch_by_question:
        order.sort(key=lambda row: str(prompts_by_row[row]))
    answers = [""] * len(dataset)
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc, leave=False):
        batch_rows = order[start : start + batch_size]
        rows = dataset[batch_rows]
        prompts = [processor.apply_chat_template(prompts_by_row[row], add_generation_prompt=True) for row in batch_rows]
        object_inputs = {}
        for column, dtype in OBJECT_COLUMNS.items():
            if column in rows:
                stacks = [[np.asarray(stack, dtype=dtype) for stack in image_stacks] for image_stacks in rows[column]]
                object_inputs = {column: stacks, "max_object_tokens": max_object_tokens}
        inputs = processor(
            images=rows["images"],
            text=prompts,
            num_visual_tokens=num_visual_tokens,
            padding=True,
            return_tensors="pt",
            **object_inputs,
        ).to(model.device)
        output = model.generate(
            **inputs,
            num_visual_tokens=num_visual_tokens,
            max_object_tokens=object_inputs.get("max_object_tokens"),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        for row, text in zip(batch_rows, processor.batch_decode(new_tokens, skip_special_tokens=True)):
            answers[row] = text.strip()
    return answers


def evaluate_budget(
    model,
    processor,
    dataset,
    num_visual_tokens: int,
    batch_size: int = 32,
    max_object_tokens: int | None = None,
    batch_by_question: bool = False,
) -> dict:
    """Per-type scores (see `score_predictions`) of greedy answers at one budget, plus the answers themselves."""
    predictions = generate_answers(
        model,
        processor,
        dataset,
        num_visual_tokens,
        batch_size,
        desc=f"evaluating at {num_visual_tokens} tokens",
        max_object_tokens=max_object_tokens,
        batch_by_question=batch_by_question,
    )
    scores = score_predictions(predictions, list(dataset["answer"]), list(dataset["question_type"]))
    return {"scores": scores, "predictions": predictions}

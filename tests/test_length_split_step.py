"""A step run as passes over rows of similar length: the smallest padded size, the same loss and gradients."""

import itertools
import random

import pytest
import torch

from delta_llava.training.length_split_step import length_split_groups, split_rows
from delta_llava.training.synthetic_vqa import make_synthetic_vqa
from delta_llava.training.train import train
from training_setup import IMAGE_SIZE, data_arguments, model_arguments, sft_config, write_tiny_parts


def padded_size(groups, lengths) -> int:
    return sum(len(group) * max(lengths[row] for row in group) for group in groups)


def set_partitions(items):
    """Every way to cut `items` into non-empty groups."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in set_partitions(rest):
        yield [[first], *partition]
        for index in range(len(partition)):
            yield [*partition[:index], [first, *partition[index]], *partition[index + 1 :]]


@pytest.mark.parametrize("passes", [1, 2, 3])
def test_groups_reach_the_smallest_padded_size_of_any_split(passes):
    rng = random.Random(passes)
    for _ in range(20):
        lengths = [rng.choice([14, 15, 16, 20, 25, 30]) for _ in range(rng.randint(1, 7))]
        groups = length_split_groups(lengths, passes)
        assert sorted(itertools.chain(*groups)) == list(range(len(lengths)))  # every row once
        assert len(groups) <= passes and all(group == sorted(group) for group in groups)  # batch order kept
        smallest = min(
            padded_size(partition, lengths)
            for partition in set_partitions(list(range(len(lengths))))
            if len(partition) <= passes
        )
        assert padded_size(groups, lengths) == smallest


def test_equal_rows_stay_one_pass_and_passes_below_one_are_refused():
    assert length_split_groups([20, 20, 20], passes=3) == [[0, 1, 2]]
    assert length_split_groups([30, 15, 15, 16], passes=2) == [[1, 2, 3], [0]]
    with pytest.raises(ValueError, match="at least 1"):
        length_split_groups([20, 30], passes=0)


def collated_batch(lengths: list[int], left_padded: bool = False) -> dict:
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        columns = slice(width - length, width) if left_padded else slice(0, length)
        mask[row, columns] = 1
    return {
        "input_ids": torch.arange(len(lengths) * width).view(len(lengths), width),
        "attention_mask": mask,
        "labels": torch.full((len(lengths), width), -100),
        "pixel_values": torch.randn(len(lengths), 3, 4, 4),
        "num_visual_tokens": 9,
    }


def test_split_rows_cuts_each_pass_to_its_longest_row_and_shares_the_rest():
    batch = collated_batch([30, 15, 16, 15])
    short, long = split_rows(batch, [[1, 2, 3], [0]], [30, 15, 16, 15])
    assert short["input_ids"].shape == (3, 16) and long["input_ids"].shape == (1, 30)
    assert torch.equal(short["input_ids"], batch["input_ids"][[1, 2, 3], :16])
    assert torch.equal(short["pixel_values"], batch["pixel_values"][[1, 2, 3]])
    assert short["attention_mask"].sum() == 46 and long["num_visual_tokens"] == 9


def test_split_rows_refuses_left_padding_lists_and_several_images_per_row():
    lengths = [30, 15]
    with pytest.raises(ValueError, match="right-padded"):
        split_rows(collated_batch(lengths, left_padded=True), [[1], [0]], lengths)
    with pytest.raises(ValueError, match="'object_masks' is a list"):
        split_rows({**collated_batch(lengths), "object_masks": [None, None]}, [[1], [0]], lengths)
    with pytest.raises(ValueError, match="one image per row"):
        split_rows({**collated_batch(lengths), "pixel_values": torch.randn(4, 3, 4, 4)}, [[1], [0]], lengths)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    parts = write_tiny_parts(root)
    questions = make_synthetic_vqa(16, seed=0, image_size=IMAGE_SIZE, question_types=["attribute", "caption"])
    questions.save_to_disk(str(root / "mixed"))  # one-word answers beside long captions: rows of several lengths
    data = data_arguments({**parts, "dataset_path": str(root / "mixed")}, length_split_passes=2)
    trained = train(model_arguments(parts, drop_path_rate=0.0), data, sft_config(root / "run", max_steps=1))
    assert trained.length_split_passes == 2
    return trained


def test_a_split_step_gives_the_loss_and_gradients_of_one_pass(trainer):
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert len(length_split_groups(lengths, 2)) == 2  # else both runs would be one pass
    model = trainer.model
    results = {}
    for passes in (1, 2):
        trainer.length_split_passes = passes
        model.zero_grad()
        loss = trainer.training_step(model, dict(batch))
        results[passes] = loss, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    trainer.length_split_passes = 2
    torch.testing.assert_close(results[2][0], results[1][0], rtol=1e-5, atol=1e-6)
    assert results[2][1].keys() == results[1][1].keys() and results[1][1]
    for name, gradient in results[1][1].items():
        torch.testing.assert_close(results[2][1][name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def test_split_steps_refuse_the_loss_per_answer(tmp_path):
    parts = write_tiny_parts(tmp_path)
    with pytest.raises(ValueError, match="loss_per_answer"):
        train(
            model_arguments(parts, loss_per_answer=True, drop_path_rate=0.0),
            data_arguments(parts, length_split_passes=2),
            sft_config(tmp_path / "run", max_steps=1),
        )

"""Length-grouped batches in random order: every row once per epoch, less padding, no long-to-short sweep."""

import random

import pytest

from delta_llava.training.length_grouped_batches import ShuffledLengthGroupedSampler, conversation_length

BATCH = 8


def batches(sampler) -> list[list[int]]:
    order = list(sampler)
    return [order[i : i + BATCH] for i in range(0, len(order), BATCH)]


def padded_tokens(groups, lengths) -> int:
    """What a collator that pads each batch to its longest row computes."""
    return sum(len(group) * max(lengths[i] for i in group) for group in groups)


@pytest.fixture
def lengths():
    rng = random.Random(0)  # short questions and long captions, as in the synthetic set
    return [rng.choice([6, 7, 8, 12]) if rng.random() < 0.8 else rng.choice([14, 18, 22]) for _ in range(1_000)]


def test_every_row_once_per_epoch_with_the_short_batch_last(lengths):
    sampler = ShuffledLengthGroupedSampler(lengths, BATCH, seed=0, mega_batch_factor=10)
    groups = batches(sampler)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert [len(group) for group in groups[:-1]] == [BATCH] * (len(groups) - 1)  # 1,000 = 125 full batches
    short = ShuffledLengthGroupedSampler(lengths[:997], BATCH, seed=0, mega_batch_factor=10)
    assert [len(group) for group in batches(short)][-1] == 997 % BATCH
    assert all(len(group) == BATCH for group in batches(short)[:-1])


def test_batches_are_padded_less_than_random_ones_and_come_in_random_length_order(lengths):
    groups = batches(ShuffledLengthGroupedSampler(lengths, BATCH, seed=0))
    rows = list(range(len(lengths)))
    random.Random(1).shuffle(rows)
    random_groups = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
    assert padded_tokens(groups, lengths) < 0.85 * padded_tokens(random_groups, lengths)
    longest = [max(lengths[i] for i in group) for group in groups]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    first_half_long = sum(value >= 14 for value in longest[: len(longest) // 2])
    assert 0 < first_half_long < sum(value >= 14 for value in longest)  # long batches are spread over the epoch


def test_the_order_is_a_function_of_seed_and_epoch(lengths):
    def order(seed, epoch):
        sampler = ShuffledLengthGroupedSampler(lengths, BATCH, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 0) == order(0, 0)
    assert order(0, 1) != order(0, 0)
    assert order(1, 0) != order(0, 0)


def test_conversation_length_counts_words_of_text_parts():
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "is there a red circle ?"}, {"type": "image", "text": None}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},
    ]
    assert conversation_length(messages) == 7


@pytest.mark.parametrize("batch_size, factor", [(0, 50), (8, 0)])
def test_sizes_below_one_are_refused(batch_size, factor):
    with pytest.raises(ValueError, match="must both be at least 1"):
        ShuffledLengthGroupedSampler([1, 2, 3], batch_size, mega_batch_factor=factor)

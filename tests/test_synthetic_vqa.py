"""The synthetic visual QA set: determinism, balance, vocabulary and labels that agree with the pixels."""

from __future__ import annotations

from collections import Counter

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delta_llava.training.synthetic_vqa import (
    BACKGROUND,
    CELL_LABEL_NAMES,
    COLORS,
    QUESTION_TYPES,
    SHAPES,
    TEXT_COLOR,
    TEXT_WORDS,
    answer_priors,
    answer_vocabulary,
    iter_synthetic_vqa,
    make_synthetic_vqa,
    position_names,
    question_kind,
    question_text,
    split_words,
    word_vocabulary,
)

NUM_ROWS = 240  # 40 per question type


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return list(iter_synthetic_vqa(NUM_ROWS, seed=0, image_size=48))


def _fingerprint(row: dict) -> tuple:
    image = row["images"][0]
    return image.size, image.mode, image.tobytes(), repr(row["messages"]), row["answer"], tuple(row["cell_labels"])


def _cell_contents(labels: list[int]) -> list[tuple[str, ...] | None]:
    """Per cell: None, ("word", word) or (size, colour, shape), decoded from the label names."""
    return [None if label == 0 else tuple(CELL_LABEL_NAMES[label].split()) for label in labels]


def _shapes(labels: list[int]) -> list[tuple[int, str, str, str]]:
    """(cell index, size, colour, shape) of every shape cell."""
    return [(i, *content) for i, content in enumerate(_cell_contents(labels)) if content and content[0] != "word"]


def test_same_seed_gives_identical_images_and_texts(rows):
    again = list(iter_synthetic_vqa(NUM_ROWS, seed=0, image_size=48))
    assert [_fingerprint(row) for row in again] == [_fingerprint(row) for row in rows]


def test_different_seeds_differ(rows):
    other = list(iter_synthetic_vqa(NUM_ROWS, seed=1, image_size=48))
    same_images = sum(a["images"][0].tobytes() == b["images"][0].tobytes() for a, b in zip(rows, other))
    assert same_images < NUM_ROWS // 10
    assert [row["messages"] for row in other] != [row["messages"] for row in rows]


def test_shorter_run_is_a_prefix_of_a_longer_one(rows):
    prefix = list(iter_synthetic_vqa(30, seed=0, image_size=48))
    assert [_fingerprint(row) for row in prefix] == [_fingerprint(row) for row in rows[:30]]


def test_dataset_columns_and_round_trip(rows):
    dataset = make_synthetic_vqa(12, seed=0, image_size=48)
    assert isinstance(dataset, datasets.Dataset)
    assert dataset.column_names == ["images", "messages", "question_type", "answer", "cell_labels"]
    for stored, row in zip(dataset, rows):
        assert len(stored["images"]) == 1
        image = stored["images"][0].convert("RGB")
        assert image.tobytes() == row["images"][0].tobytes()
        assert stored["answer"] == row["answer"]
        assert stored["cell_labels"] == row["cell_labels"]


def test_a_scene_asked_twice_is_stored_once_and_round_trips():
    rows = list(iter_synthetic_vqa(8, seed=5, image_size=48, questions_per_scene=2))
    dataset = make_synthetic_vqa(8, seed=5, image_size=48, questions_per_scene=2)
    stored = dataset.cast_column("images", datasets.List(datasets.Image(decode=False)))["images"]
    assert all(stored[row] == stored[row + 1] for row in range(0, 8, 2))  # the same PNG for both questions
    assert len({images[0]["bytes"] for images in stored}) == 4
    for decoded, row in zip(dataset["images"], rows):
        assert decoded[0].convert("RGB").tobytes() == row["images"][0].tobytes()


def test_messages_put_the_question_before_the_image(rows):
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert [item["type"] for item in user["content"]] == ["text", "image"]
        assert assistant["content"] == [{"type": "text", "text": row["answer"]}]
        assert question_text(row["messages"]) == user["content"][0]["text"]
        assert row["images"][0].size == (48, 48) and row["images"][0].mode == "RGB"


def test_question_types_are_balanced_exactly(rows):
    counts = Counter(row["question_type"] for row in rows)
    assert counts == {name: NUM_ROWS // len(QUESTION_TYPES) for name in QUESTION_TYPES}


def test_answers_are_balanced(rows):
    def spread(question_type: str) -> int:
        counts = Counter(row["answer"] for row in rows if row["question_type"] == question_type)
        return max(counts.values()) - min(counts.values())

    answers = Counter(row["answer"] for row in rows if row["question_type"] == "existence")
    assert abs(answers["yes"] - answers["no"]) <= 1
    assert spread("count") <= 1 and spread("text") <= 1
    assert spread("attribute") <= 3 and spread("position") <= 3


def test_answers_and_words_come_from_the_declared_vocabularies(rows):
    answers, words = set(answer_vocabulary()), set(word_vocabulary())
    for row in rows:
        if row["question_type"] != "caption":
            assert row["answer"] in answers
        assert set(split_words(question_text(row["messages"]) + " " + row["answer"])) <= words
    assert len(answers) == len(answer_vocabulary())


def test_scene_questions_are_distinct():
    scene_rows = list(iter_synthetic_vqa(60, seed=3, image_size=48, questions_per_scene=len(QUESTION_TYPES)))
    for start in range(0, len(scene_rows), len(QUESTION_TYPES)):
        scene = scene_rows[start : start + len(QUESTION_TYPES)]
        assert len({question_text(row["messages"]) for row in scene}) == len(scene)
        assert {row["question_type"] for row in scene} == set(QUESTION_TYPES)
        assert len({row["images"][0].tobytes() for row in scene}) == 1


def _check_answer_matches_labels(row: dict, grid_size: int) -> None:
    """Recompute the row's answer from its cell labels alone."""
    question, answer, labels = question_text(row["messages"]), row["answer"], row["cell_labels"]
    words = question.split()
    shapes, names = _shapes(labels), position_names(grid_size)
    question_type = row["question_type"]
    if question_type == "count":
        asked = words[2].removesuffix("s")
        attribute = 2 if asked in COLORS else 3
        assert answer == str(sum(shape[attribute] == asked for shape in shapes))
    elif question_type == "existence":
        color, shape = words[3], words[4]
        assert answer == ("yes" if any(s[2:] == (color, shape) for s in shapes) else "no")
    elif question_type == "position":
        color, shape = words[3], words[4]
        cells = [s[0] for s in shapes if s[2:] == (color, shape)]
        assert len(cells) == 1 and names[cells[0]] == answer
    elif question_type == "attribute":
        cell = names.index(question.split(" the ")[-1].removesuffix(" cell ?"))
        size, color, shape = _cell_contents(labels)[cell]
        assert answer == {"color": color, "shape": shape, "size": size}[words[1]]
    elif question_type == "text":
        assert [c[1] for c in _cell_contents(labels) if c and c[0] == "word"] == [answer]
    else:
        assert answer == " and ".join(" ".join(c) for c in _cell_contents(labels) if c)


def test_answers_agree_with_cell_labels(rows):
    for row in rows:
        assert len(row["cell_labels"]) == 9
        _check_answer_matches_labels(row, grid_size=3)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31), grid_size=st.integers(2, 5), cell_pixels=st.integers(8, 24))
def test_answers_agree_with_labels_for_any_layout(seed, grid_size, cell_pixels):
    answers, words = set(answer_vocabulary(grid_size)), set(word_vocabulary(grid_size))
    for row in iter_synthetic_vqa(18, seed, image_size=grid_size * cell_pixels, grid_size=grid_size):
        assert len(row["cell_labels"]) == grid_size**2
        assert row["images"][0].size == (grid_size * cell_pixels,) * 2
        assert row["question_type"] == "caption" or row["answer"] in answers
        assert set(split_words(question_text(row["messages"]) + " " + row["answer"])) <= words
        _check_answer_matches_labels(row, grid_size)


def test_cell_labels_agree_with_pixels():
    for row in iter_synthetic_vqa(60, seed=5, image_size=96):
        image = row["images"][0]
        edges = [round(i * 96 / 3) for i in range(4)]
        for index, content in enumerate(_cell_contents(row["cell_labels"])):
            top, left = edges[index // 3], edges[index % 3]
            cell = image.crop((left, top, edges[index % 3 + 1], edges[index // 3 + 1]))
            colors = {color for _, color in cell.getcolors(maxcolors=cell.width * cell.height)}
            if content is None:
                assert colors == {BACKGROUND}
            elif content[0] == "word":
                assert TEXT_COLOR in colors and not colors & set(COLORS.values())
            else:
                size, color, _ = content
                assert colors == {BACKGROUND, COLORS[color]}
                if size == "large":
                    assert cell.getpixel((cell.width // 2, cell.height // 2)) == COLORS[color]


def test_vocabulary_sizes_follow_the_layout():
    assert len(answer_vocabulary(3)) == 2 + len(COLORS) + len(SHAPES) + 2 + 5 + 9 + len(TEXT_WORDS)
    assert len(answer_vocabulary(4, max_objects=6)) == 2 + len(COLORS) + len(SHAPES) + 2 + 7 + 16 + len(TEXT_WORDS)
    assert {"row4", "col4"} <= set(word_vocabulary(4)) and "row4" not in word_vocabulary(3)
    assert word_vocabulary() == sorted(set(word_vocabulary()))


def test_answer_priors_are_computed_from_the_data():
    def chat(question: str, answer: str) -> list[dict]:
        return [
            {"role": "user", "content": [{"type": "text", "text": question}, {"type": "image", "text": None}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]

    table = [
        ("attribute", "what color is the object in the top left cell ?", "red"),
        ("attribute", "what color is the object in the top right cell ?", "blue"),
        ("attribute", "what size is the object in the top left cell ?", "small"),
        ("existence", "is there a red circle ?", "yes"),
        ("existence", "is there a red square ?", "yes"),
        ("existence", "is there a blue square ?", "no"),
    ]
    dataset = datasets.Dataset.from_dict(
        {
            "question_type": [t for t, _, _ in table],
            "answer": [a for _, _, a in table],
            "messages": [chat(q, a) for _, q, a in table],
        }
    )
    priors = answer_priors(dataset)
    assert priors["existence"] == {
        "majority_answers": {"existence": "yes"},
        "majority_accuracy": pytest.approx(2 / 3),
        "chance": pytest.approx(0.5),
        "num_samples": 3,
    }
    # Colour kind: 2 rows, answers {red, blue}: majority (first seen) gets 1 row, a guess is right 1/2 of the time.
    # Size kind: 1 row, one answer: both get it right.
    assert priors["attribute"]["majority_answers"] == {"color": "red", "size": "small"}
    assert priors["attribute"]["majority_accuracy"] == pytest.approx(2 / 3)
    assert priors["attribute"]["chance"] == pytest.approx((0.5 + 0.5 + 1) / 3)


def test_question_kind_refuses_foreign_attribute_questions():
    assert question_kind("attribute", "what size is the object in the top left cell ?") == "size"
    assert question_kind("count", "how many circles are there ?") == "count"
    with pytest.raises(ValueError, match="color"):
        question_kind("attribute", "what is this ?")


@pytest.mark.parametrize(
    ("arguments", "argument_name"),
    [
        ({"question_types": ["color"]}, "question_types"),
        ({"question_types": []}, "question_types"),
        ({"question_types": ["count", "count"]}, "question_types"),
        ({"grid_size": 1}, "grid_size"),
        ({"grid_size": 0}, "grid_size"),
        ({"image_size": 20}, "image_size"),
        ({"max_objects": 9}, "max_objects"),
        ({"max_objects": 0}, "max_objects"),
        ({"questions_per_scene": 7}, "questions_per_scene"),
        ({"num_samples": -1}, "num_samples"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(arguments, argument_name):
    call = {"num_samples": 4, "seed": 0, "image_size": 48} | arguments
    with pytest.raises(ValueError, match=argument_name):
        list(iter_synthetic_vqa(**call))

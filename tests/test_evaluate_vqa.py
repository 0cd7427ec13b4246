"""Greedy VQA answers: batching rows by question changes the batches, not the answers or their order."""

import pytest
import torch

from delta_llava.training.evaluate_vqa import generate_answers
from delta_llava.training.model_builder import build_model_and_processor
from delta_llava.training.synthetic_vqa import make_synthetic_vqa
from training_setup import IMAGE_SIZE, model_arguments, write_tiny_parts


@pytest.fixture(scope="module")
def model_and_questions(tmp_path_factory):
    parts = write_tiny_parts(tmp_path_factory.mktemp("parts"), num_samples=4)
    torch.manual_seed(0)
    model, processor = build_model_and_processor(model_arguments(parts))
    questions = make_synthetic_vqa(14, seed=3, image_size=IMAGE_SIZE)  # every question type, captions among them
    return model, processor, questions


def test_batching_by_question_gives_the_same_answers_in_row_order(model_and_questions):
    model, processor, questions = model_and_questions
    one_by_one = generate_answers(model, processor, questions, batch_size=1, max_new_tokens=6)
    in_row_order = generate_answers(model, processor, questions, batch_size=4, max_new_tokens=6)
    by_question = generate_answers(model, processor, questions, batch_size=4, max_new_tokens=6, batch_by_question=True)
    assert len(set(one_by_one)) > 1  # the random model's answers tell rows apart, so a mixed-up order would show
    assert by_question == in_row_order == one_by_one

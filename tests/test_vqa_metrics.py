"""Per-question-type metrics on hand-made cases, majority baselines, and offline use."""

from __future__ import annotations

import math
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delta_llava.training.synthetic_vqa import QUESTION_TYPES, answer_priors, make_synthetic_vqa
from delta_llava.training.vqa_metrics import (
    CaptionBleu,
    NormalizedExactMatch,
    YesNoScores,
    majority_baseline,
    normalize_answer,
    score_predictions,
)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_vqa(120, seed=11, image_size=48)


def _bleu(predictions: list[str], references: list[str], **options) -> float:
    return CaptionBleu(keep_in_memory=True).compute(predictions=predictions, references=references, **options)["bleu"]


def test_normalize_answer():
    assert normalize_answer("  Top-Left. ") == "top left"
    assert normalize_answer("YES!") == "yes"
    assert normalize_answer(None) == ""


def test_exact_match_perfect_and_partial():
    metric = NormalizedExactMatch(keep_in_memory=True)
    assert metric.compute(predictions=["red", "2"], references=["red", "2"]) == {"exact_match": 1.0}
    partial = metric.compute(predictions=["Red.", "top left", "3", "cat"], references=["red", "top-left", "2", "dog"])
    assert partial == {"exact_match": 0.5}


def test_yes_no_scores_by_hand():
    # TP = 1 (row 1), FP = 2 (rows 2, 3), FN = 1 (row 4), TN = 0.
    scores = YesNoScores(keep_in_memory=True).compute(
        predictions=["Yes.", "yes, there is", "yes", "no"], references=["yes", "no", "no", "yes"]
    )
    precision, recall = 1 / 3, 1 / 2
    assert scores["accuracy"] == pytest.approx(1 / 4)
    assert scores["precision"] == pytest.approx(precision)
    assert scores["recall"] == pytest.approx(recall)
    assert scores["f1"] == pytest.approx(2 * precision * recall / (precision + recall)) == pytest.approx(0.4)
    assert scores["yes_ratio"] == pytest.approx(3 / 4)


def test_yes_no_scores_without_positive_predictions():
    scores = YesNoScores(keep_in_memory=True).compute(predictions=["no", "maybe"], references=["yes", "no"])
    assert scores == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}


def test_yes_no_scores_refuse_other_references():
    with pytest.raises(ValueError, match="yes"):
        YesNoScores(keep_in_memory=True).compute(predictions=["yes"], references=["red"])


def test_bleu_perfect_and_zero():
    captions = ["large red circle and small blue square", "word cat and small green triangle"]
    assert _bleu(captions, captions) == pytest.approx(1.0)
    assert _bleu(["yellow"], ["red circle"]) == 0.0
    assert _bleu([""], ["red circle"], smooth=True) == 0.0


def test_bleu_partial_by_hand():
    prediction, reference = ["red circle and blue square"], ["red circle and green square"]
    # Clipped matches / totals: unigrams 4/5, bigrams 2/4, trigrams 1/3, 4-grams 0/2.
    assert _bleu(prediction, reference, max_order=2) == pytest.approx(math.sqrt(4 / 5 * 2 / 4))
    assert _bleu(prediction, reference) == 0.0
    smoothed = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4)
    assert _bleu(prediction, reference, smooth=True) == pytest.approx(smoothed)


def test_bleu_brevity_penalty_and_corpus_pooling():
    # 2 candidate words against 5 reference words: penalty exp(1 - 5/2).
    assert _bleu(["red circle"], ["red circle and blue square"], max_order=1) == pytest.approx(math.exp(-1.5))
    # Counts pool over the corpus: unigram precision (2 + 0) / (2 + 2), lengths equal.
    assert _bleu(["red circle", "blue square"], ["red circle", "green triangle"], max_order=1) == pytest.approx(0.5)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["red", "blue", "circle", "and", "word", "cat"]), min_size=1, max_size=12))
def test_identical_text_scores_perfectly(words):
    text = " ".join(words)
    assert _bleu([text.upper() + "."], [text], max_order=min(4, len(words))) == pytest.approx(1.0)
    assert score_predictions([text.title()], [text], ["caption"])["caption"]["accuracy"] == 1.0


def test_score_predictions_per_type_and_overall():
    question_types = ["attribute", "attribute", "existence", "existence", "caption", "count"]
    references = ["red", "small", "yes", "no", "large red circle and word cat", "2"]
    predictions = ["red", "large", "yes", "yes", "large red circle", "2"]
    scores = score_predictions(predictions, references, question_types)
    assert list(scores) == ["attribute", "count", "existence", "caption", "overall"]
    assert scores["attribute"] == {"accuracy": 0.5, "num_samples": 2}
    assert scores["count"] == {"accuracy": 1.0, "num_samples": 1}
    assert scores["existence"]["accuracy"] == 0.5
    assert scores["existence"]["precision"] == 0.5 and scores["existence"]["recall"] == 1.0
    assert scores["existence"]["f1"] == pytest.approx(2 / 3)
    assert scores["caption"]["accuracy"] == 0.0
    # A 3-word caption has no 4-grams, so unsmoothed BLEU-4 is 0.
    assert scores["caption"]["bleu"] == 0.0
    assert scores["overall"] == {"accuracy": 3 / 6, "macro_accuracy": (0.5 + 1 + 0.5 + 0) / 4, "num_samples": 6}


def test_score_predictions_perfect_on_generated_data(dataset):
    answers = list(dataset["answer"])
    scores = score_predictions(answers, answers, list(dataset["question_type"]))
    assert set(scores) == {*QUESTION_TYPES, "overall"}
    assert all(s["accuracy"] == 1.0 for s in scores.values())
    assert scores["existence"]["f1"] == 1.0 and scores["caption"]["bleu"] == pytest.approx(1.0)


def test_score_predictions_rejects_bad_input():
    with pytest.raises(ValueError, match="question_types"):
        score_predictions(["red"], ["red"], ["colour"])
    with pytest.raises(ValueError, match="same length"):
        score_predictions(["red"], ["red", "blue"], ["attribute"])


def test_majority_baseline_matches_the_priors(dataset):
    baseline, priors = majority_baseline(dataset), answer_priors(dataset)
    for question_type, prior in priors.items():
        assert baseline[question_type]["accuracy"] == pytest.approx(prior["majority_accuracy"])
        assert baseline[question_type]["chance"] == prior["chance"]
        assert baseline[question_type]["majority_answers"] == prior["majority_answers"]
        assert baseline[question_type]["accuracy"] >= prior["chance"] - 1e-12
    existence = baseline["existence"]
    assert existence["accuracy"] == pytest.approx(0.5) and existence["yes_ratio"] in (0.0, 1.0)
    weights = [prior["num_samples"] for prior in priors.values()]
    expected_chance = sum(p["chance"] * w for p, w in zip(priors.values(), weights)) / sum(weights)
    assert baseline["overall"]["chance"] == pytest.approx(expected_chance)
    assert 0 < baseline["overall"]["accuracy"] < 0.5


def test_everything_works_without_network(dataset, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    small = make_synthetic_vqa(12, seed=2, image_size=48)
    answers = list(small["answer"])
    assert score_predictions(answers, answers, list(small["question_type"]))["overall"]["accuracy"] == 1.0
    assert "overall" in majority_baseline(dataset)

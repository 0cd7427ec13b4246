"""Per-question-type scores for the synthetic visual QA set, built on ``evaluate`` without the network.

The metrics are local ``evaluate.Metric`` subclasses, so nothing is fetched from the Hub:

- ``NormalizedExactMatch``: share of answers equal to the reference after ``normalize_answer``;
- ``YesNoScores``: accuracy, precision, recall, F1 and yes-ratio with "yes" as the positive class (as POPE);
- ``CaptionBleu``: corpus-level BLEU (geometric mean of clipped n-gram precisions times a brevity penalty).

Every question type gets ``accuracy`` (normalised exact match); ``existence`` also gets the yes/no scores and
``caption`` also gets ``bleu``.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Sequence

import datasets
import evaluate

from .synthetic_vqa import NO, QUESTION_TYPES, YES, answer_priors, question_kind, question_text

YES_NO_TYPES = frozenset({"existence"})
CAPTION_TYPES = frozenset({"caption"})
_PUNCTUATION_TO_SPACE = str.maketrans({mark: " " for mark in string.punctuation})


def normalize_answer(text: str | None) -> str:
    """Lowercase, turn punctuation into spaces and collapse whitespace (``None`` becomes ``""``)."""
    return " ".join((text or "").lower().translate(_PUNCTUATION_TO_SPACE).split())


class _StringPairMetric(evaluate.Metric):
    """A local metric over two equal-length lists of strings, described by three class attributes."""

    _DESCRIPTION = ""
    _CITATION = ""
    _INPUTS = "predictions, references: lists of strings of equal length."

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self._DESCRIPTION,
            citation=self._CITATION,
            inputs_description=self._INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )


class NormalizedExactMatch(_StringPairMetric):
    """Share of predictions equal to their reference after ``normalize_answer``."""

    _DESCRIPTION = "Exact match after lowercasing, removing punctuation and collapsing whitespace."

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
        return {"exact_match": hits / len(references)}


class YesNoScores(_StringPairMetric):
    """POPE-style scores; a prediction counts as "yes" when its first normalised word is "yes"."""

    _DESCRIPTION = "Accuracy, precision, recall, F1 and yes-ratio of yes/no answers, 'yes' being positive."
    _CITATION = "Li et al., Evaluating Object Hallucination in Large Vision-Language Models (POPE), 2023."
    _INPUTS = "predictions: free-form answers; references: 'yes' or 'no'."

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        predicted_yes = [_first_word(p) == YES for p in predictions]
        actual_yes = []
        for reference in references:
            word = normalize_answer(reference)
            if word not in (YES, NO):
                raise ValueError(f"references of yes/no questions must be 'yes' or 'no', got {reference!r}")
            actual_yes.append(word == YES)
        pairs = list(zip(predicted_yes, actual_yes))
        true_positives = sum(p and a for p, a in pairs)
        precision = _ratio(true_positives, sum(predicted_yes))
        recall = _ratio(true_positives, sum(actual_yes))
        return {
            "accuracy": sum(p == a for p, a in pairs) / len(pairs),
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "yes_ratio": sum(predicted_yes) / len(pairs),
        }


class CaptionBleu(_StringPairMetric):
    """Corpus BLEU over normalised words, one reference per prediction.

    Clipped n-gram matches and candidate n-gram totals are summed over the corpus for n = 1..``max_order``;
    BLEU = brevity penalty x geometric mean of the precisions, with brevity penalty exp(1 - r/c) when the
    total candidate length c is below the total reference length r. ``smooth`` adds one to every match
    count and total (Lin and Och, 2004), so a missing n-gram order does not zero the score.
    """

    _DESCRIPTION = "Corpus-level BLEU with an optional add-one smoothing, computed locally."
    _CITATION = "Papineni et al., BLEU: a Method for Automatic Evaluation of Machine Translation, 2002."
    _INPUTS = "predictions, references: lists of caption strings; max_order: int; smooth: bool."

    def _compute(
        self, predictions: list[str], references: list[str], max_order: int = 4, smooth: bool = False
    ) -> dict[str, float | list[float]]:
        if not isinstance(max_order, int) or max_order < 1:
            raise ValueError(f"max_order must be an integer >= 1, got {max_order!r}")
        matches, totals = [0] * max_order, [0] * max_order
        candidate_length = reference_length = 0
        for prediction, reference in zip(predictions, references):
            candidate, target = normalize_answer(prediction).split(), normalize_answer(reference).split()
            candidate_length += len(candidate)
            reference_length += len(target)
            for order in range(1, max_order + 1):
                candidate_ngrams, target_ngrams = _ngrams(candidate, order), _ngrams(target, order)
                matches[order - 1] += sum((candidate_ngrams & target_ngrams).values())
                totals[order - 1] += sum(candidate_ngrams.values())
        offset = 1 if smooth else 0
        precisions = [_ratio(m + offset, t + offset) for m, t in zip(matches, totals)]
        if candidate_length == 0 or min(precisions) == 0:
            return {"bleu": 0.0, "precisions": precisions}
        mean_log_precision = sum(math.log(p) for p in precisions) / max_order
        brevity_penalty = min(1.0, math.exp(1 - reference_length / candidate_length))
        bleu = brevity_penalty * math.exp(mean_log_precision)
        return {"bleu": bleu, "precisions": precisions}


def score_predictions(
    predictions: Sequence[str], references: Sequence[str], question_types: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    """Score answers per question type and overall.

    Returns ``{type: scores}`` for every type present, plus ``"overall"`` with ``accuracy`` (normalised exact
    match over all samples), ``macro_accuracy`` (mean of the per-type accuracies) and ``num_samples``.
    """
    if not len(predictions) == len(references) == len(question_types):
        raise ValueError(
            "predictions, references and question_types must have the same length, got "
            f"{len(predictions)}, {len(references)} and {len(question_types)}"
        )
    unknown = sorted(set(question_types) - set(QUESTION_TYPES))
    if unknown:
        raise ValueError(f"question_types must be names from {list(QUESTION_TYPES)}, got {unknown}")
    predictions = ["" if p is None else str(p) for p in predictions]
    scores: dict[str, dict[str, float | int]] = {}
    present = set(question_types)
    for question_type in [name for name in QUESTION_TYPES if name in present]:
        rows = [i for i, name in enumerate(question_types) if name == question_type]
        type_predictions = [predictions[i] for i in rows]
        type_references = [references[i] for i in rows]
        result = {"accuracy": _exact_match(type_predictions, type_references), "num_samples": len(rows)}
        if question_type in YES_NO_TYPES:
            yes_no = YesNoScores(keep_in_memory=True).compute(predictions=type_predictions, references=type_references)
            result |= {name: value for name, value in yes_no.items() if name != "accuracy"}
        if question_type in CAPTION_TYPES:
            bleu = CaptionBleu(keep_in_memory=True).compute(predictions=type_predictions, references=type_references)
            result["bleu"] = bleu["bleu"]
        scores[question_type] = result
    scores["overall"] = {
        "accuracy": _exact_match(predictions, list(references)) if predictions else 0.0,
        "macro_accuracy": sum(s["accuracy"] for s in scores.values()) / len(scores) if scores else 0.0,
        "num_samples": len(predictions),
    }
    return scores


def majority_baseline(dataset: datasets.Dataset) -> dict[str, dict]:
    """Scores of answering every row with its question kind's most frequent answer in ``dataset``.

    Same layout as ``score_predictions``; every type also carries ``majority_answers`` and ``chance`` (see
    ``synthetic_vqa.answer_priors``), and ``"overall"`` carries the sample-weighted mean ``chance``.
    """
    priors = answer_priors(dataset)
    question_types = list(dataset["question_type"])
    predictions = [
        priors[name]["majority_answers"][question_kind(name, question_text(messages))]
        for name, messages in zip(question_types, dataset["messages"])
    ]
    scores = score_predictions(predictions, list(dataset["answer"]), question_types)
    for name, prior in priors.items():
        scores[name] |= {"majority_answers": prior["majority_answers"], "chance": prior["chance"]}
    total = sum(prior["num_samples"] for prior in priors.values())
    scores["overall"]["chance"] = sum(p["chance"] * p["num_samples"] for p in priors.values()) / max(total, 1)
    return scores


def _exact_match(predictions: list[str], references: list[str]) -> float:
    return NormalizedExactMatch(keep_in_memory=True).compute(predictions=predictions, references=references)[
        "exact_match"
    ]


def _first_word(text: str) -> str:
    words = normalize_answer(text).split()
    return words[0] if words else ""


def _ngrams(words: list[str], order: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[start : start + order]) for start in range(len(words) - order + 1))


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, or 0.0 when the denominator is 0."""
    return numerator / denominator if denominator else 0.0

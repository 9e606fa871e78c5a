"""Exact match (after whitespace normalization) as a local `evaluate` module."""

import datasets
import evaluate


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predictions equal to their reference once whitespace is normalized.",
            citation="",
            inputs_description="predictions: list of str; references: list of str",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        hits = sum(" ".join(p.split()) == " ".join(r.split()) for p, r in zip(predictions, references))
        return {"exact_match": hits / len(references) if references else 0.0}

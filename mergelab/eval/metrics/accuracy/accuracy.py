"""Accuracy as a local `evaluate` module (hub metrics cannot load offline)."""

import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predictions equal to their reference label.",
            citation="",
            inputs_description="predictions: list of int; references: list of int",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        hits = sum(int(p == r) for p, r in zip(predictions, references))
        return {"accuracy": hits / len(references) if references else 0.0}

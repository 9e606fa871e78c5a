"""Tiny local copies of `bigscience/P3` subsets in the hub's schema, for the T0 suite's loading code.

A P3 subset has splits of rows with `inputs` / `targets` (T5 token ids), `inputs_pretokenized` /
`targets_pretokenized` (the filled-in template and the answer, as text) and, for templates with fixed
answers, `answer_choices`. `save_p3_subset` writes one subset as a `datasets.DatasetDict` with those
features under `<root>/bigscience/P3/<subset>`, the layout `eval.data_dir` reads.
"""

from __future__ import annotations

from pathlib import Path

import datasets

P3_FEATURES = {
    "inputs": datasets.Sequence(datasets.Value("int32")),
    "inputs_pretokenized": datasets.Value("string"),
    "targets": datasets.Sequence(datasets.Value("int32")),
    "targets_pretokenized": datasets.Value("string"),
    "answer_choices": datasets.Sequence(datasets.Value("string")),
}


def p3_rows(prompts, targets, choices=None) -> datasets.Dataset:
    """One P3 split; P3 pads the pretokenized text with spaces and newlines, so do we."""
    columns = {
        "inputs": [[3 + index % 50 for index in range(len(prompt.split()))] for prompt in prompts],
        "inputs_pretokenized": [prompt + "\n" for prompt in prompts],
        "targets": [[3] for _ in targets],
        "targets_pretokenized": [" " + target for target in targets],
    }
    if choices is not None:
        columns["answer_choices"] = [list(options) for options in choices]
    features = datasets.Features({name: P3_FEATURES[name] for name in columns})
    return datasets.Dataset.from_dict(columns, features=features)


def save_p3_subset(root: Path, subset: str, splits: dict[str, datasets.Dataset]) -> Path:
    path = Path(root) / "bigscience" / "P3" / subset
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path

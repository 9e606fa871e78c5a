"""Statistic budget benchmark: Fisher and Gram computation time for one zoo expert.

Budget (issue #7): the Fisher of one smallest-size (xs) expert on 1,000 examples <= 2 minutes on this CPU.
Times the computation itself (model loading and tokenization excluded and printed apart), without the
statistic cache, for each estimator asked for, then the Gram matrices (RegMean) on the same examples.
Threads follow `mergelab.stats.compute.cpu_threads_for` (what `mergelab merge`/`run` use) unless --threads.
The zoo size must be built (`mergelab zoo build size=xs`).

usage: python scripts/bench_stats.py [--size xs] [--category color] [--n-examples 1000]
                                     [--estimators expected empirical] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

FISHER_BUDGET_SECONDS = 120


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="xs", help="zoo size (default xs, the smallest ladder size)")
    parser.add_argument("--base-kind", default="base", choices=["base", "it"])
    parser.add_argument("--category", default="color", help="the expert's held-in category")
    parser.add_argument("--n-examples", type=int, default=1000)
    parser.add_argument("--estimators", nargs="+", default=["expected", "empirical"])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: as mergelab computes statistics)",
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from mergelab import zoo
    from mergelab.stats.compute import cpu_threads_for, load_causal_lm

    path = zoo.model_path(args.size, args.base_kind, "expert", args.category)
    started = time.perf_counter()
    model = load_causal_lm(path, torch.device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
        threads = contextlib.nullcontext()
    else:
        threads = cpu_threads_for(model, torch.device(args.device))
    with threads:
        run(args, model, path, time.perf_counter() - started)


def run(args: argparse.Namespace, model, path, load_seconds: float) -> None:
    import torch

    from mergelab.stats.compute import load_statistic_tokenizer
    from mergelab.stats.data import load_examples
    from mergelab.stats.encode import encode_examples
    from mergelab.stats.fisher import fisher_diagonal
    from mergelab.stats.gram import gram_matrices

    started = time.perf_counter()
    tokenizer = load_statistic_tokenizer(path, None)
    examples = load_examples(f"zoo:{args.category}", args.n_examples)
    encoded = encode_examples(tokenizer, examples.examples)
    setup = load_seconds + time.perf_counter() - started
    n_parameters = sum(p.numel() for p in model.parameters())
    kinds = sum(example.is_classification for example in encoded)
    print(
        f"expert {path}: {n_parameters / 1e6:.2f}M parameters; {len(encoded)} examples "
        f"({kinds} classification, {len(encoded) - kinds} generation); setup {setup:.1f} s; "
        f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}"
    )
    for estimator in args.estimators:
        started, cpu = time.perf_counter(), time.process_time()
        fisher_diagonal(model, tokenizer, encoded, estimator, desc=f"fisher {estimator}")
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        verdict = "within" if seconds <= FISHER_BUDGET_SECONDS else "OVER"
        print(
            f"fisher {estimator}: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU "
            f"({1000 * seconds / len(encoded):.1f} ms/example); {verdict} the {FISHER_BUDGET_SECONDS} s budget"
        )
    started, cpu = time.perf_counter(), time.process_time()
    gram_matrices(model, tokenizer, encoded)
    print(
        f"gram: {time.perf_counter() - started:.1f} s wall, {time.process_time() - cpu:.1f} s CPU "
        f"for {len(encoded)} examples"
    )


if __name__ == "__main__":
    main()

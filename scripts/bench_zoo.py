"""Zoo build-time budget benchmark: builds sizes from scratch in a temporary MERGELAB_HOME and times them.

Budgets (issue #4): micro <= 60 s, the smallest ladder size (every component) <= 5 min on a 2-core CPU,
the whole ladder <= 60 min on CPU or <= 10 min on one GPU. Also prints batched evaluation throughput
against a one-example-at-a-time loop (target >= 10x).

usage: python scripts/bench_zoo.py --sizes micro xs [--device cpu] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

BUDGET_SECONDS = {"micro": 60, "smallest": 300, "ladder_cpu": 3600, "ladder_gpu": 600}


def time_build(size: str, device: str) -> float:
    from mergelab import zoo

    started = time.perf_counter()
    zoo.build(size, device=device)
    return time.perf_counter() - started


def eval_throughput(size: str, task: str, n_examples: int) -> tuple[float, float]:
    """Examples per second of `evaluate_task` with batch size 64 and with batch size 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergelab import zoo
    from mergelab.eval import evaluate_task

    path = zoo.model_path(size, "it", "base")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    data = zoo.load_task(task, "test").select(range(n_examples))
    kind = zoo.load_suite().tasks[task].kind
    rates = []
    for batch_size in (64, 1):
        started = time.perf_counter()
        evaluate_task(model, tokenizer, data, kind, batch_size=batch_size)
        rates.append(n_examples / (time.perf_counter() - started))
    return rates[0], rates[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["micro", "xs"], help="sizes to build, e.g. micro xs s")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--keep", type=Path, help="build into this MERGELAB_HOME instead of a temporary one")
    parser.add_argument("--eval-task", default="color_qa", help="task for the evaluation throughput check")
    parser.add_argument("--eval-examples", type=int, default=200)
    args = parser.parse_args()

    home = args.keep or Path(tempfile.mkdtemp(prefix="mergelab_bench_zoo_"))
    os.environ["MERGELAB_HOME"] = str(home)
    from mergelab import zoo
    from mergelab.zoo.cache import read_manifest

    print(f"building into {home} on {args.device} with {os.cpu_count()} CPU cores visible")
    seconds = {size: time_build(size, args.device) for size in args.sizes}
    print("\nsize     parameters   build s   budget s   within")
    for size, elapsed in seconds.items():
        budget = BUDGET_SECONDS["micro"] if size == "micro" else None
        if size == zoo.LADDER[0]:
            budget = BUDGET_SECONDS["smallest"]
        params = read_manifest(zoo.model_path(size, "base", "base"))["parameters"]
        verdict = "-" if budget is None else ("yes" if elapsed <= budget else "NO")
        print(f"{size:<8} {params:>10,} {elapsed:>9.1f} {budget or '-':>10} {verdict:>8}")
    ladder = [size for size in zoo.LADDER if size in seconds]
    if ladder == zoo.LADDER:
        budget = BUDGET_SECONDS["ladder_gpu" if args.device != "cpu" else "ladder_cpu"]
        total = sum(seconds[size] for size in ladder)
        print(f"whole ladder: {total:.0f} s (budget {budget} s)")
    batched, single = eval_throughput(args.sizes[0], args.eval_task, args.eval_examples)
    print(
        f"evaluation on {args.eval_task}: batched {batched:.0f} examples/s, one at a time {single:.0f} "
        f"examples/s, ratio {batched / single:.1f}x (target >= 10x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

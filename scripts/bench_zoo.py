"""Zoo build-time budget benchmark: builds sizes from scratch in a temporary MERGELAB_HOME and times them.

Budgets (issue #4): micro <= 60 s, the smallest ladder size (every component) <= 5 min on a 2-core CPU,
the whole ladder <= 60 min on CPU or <= 10 min on one GPU. Also prints batched evaluation throughput
against a one-example-at-a-time loop (target >= 10x).

With --step, times instead one pretraining step of each size on the CPU (at the size's thread count and
shapes, random tokens): forward, backward and optimizer separately, for the training loop as it was
(full-vocabulary logits under an all-ones attention mask, the library's loss, single-tensor AdamW), as it
is (`mergelab.zoo.train.labelled_loss` without a mask, multi-tensor AdamW), and as it is under bf16
autocast, under `torch.compile` and under both, with tokens per second, the speed-up over the current loop
and the first (compiling) step's seconds.

usage: python scripts/bench_zoo.py --sizes micro xs [--device cpu] [--keep DIR]
       python scripts/bench_zoo.py --step --sizes xs s [--repeats 20]
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


LOOPS = ("before", "current", "bf16", "compiled", "compiled bf16")


def time_step(size: str, loop: str, repeats: int) -> dict[str, float]:
    """Mean milliseconds of forward, backward and optimizer of one pretraining step of `size` (after 3 warm-up
    steps), tokens per second and the first step's seconds, for one of `LOOPS`: the old step, the current one,
    or the current one under bf16 autocast and/or `torch.compile` of its loss."""
    import torch
    from transformers import LlamaForCausalLM

    from mergelab.zoo.ladder import SIZES, size_config
    from mergelab.zoo.train import labelled_loss

    spec = SIZES[size]
    torch.set_num_threads(spec.cpu_threads)
    torch.manual_seed(0)
    vocab = 280
    model = LlamaForCausalLM(size_config(spec, vocab)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=loop != "before")
    tokens = torch.randint(
        0, vocab, (spec.batch_size, spec.seq_len), generator=torch.Generator().manual_seed(0)
    )
    loss_of = torch.compile(labelled_loss) if loop.startswith("compiled") else labelled_loss
    totals = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    first_step = 0.0
    for step in range(repeats + 3):
        started = time.perf_counter()
        if loop == "before":
            loss = model(input_ids=tokens, attention_mask=torch.ones_like(tokens), labels=tokens).loss
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=loop.endswith("bf16")):
                loss = loss_of(model, tokens, tokens)
        forward = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        done = time.perf_counter()
        if step == 0:
            first_step = done - started
        if step >= 3:
            totals["forward"] += forward - started
            totals["backward"] += backward - forward
            totals["optimizer"] += done - backward
    result = {name: 1000 * seconds / repeats for name, seconds in totals.items()}
    result["step"] = sum(result.values())
    result["tokens_per_s"] = spec.batch_size * spec.seq_len / (result["step"] / 1000)
    result["first_step_s"] = first_step
    return result


def print_step_times(sizes: list[str], repeats: int) -> None:
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPU cores")
    print(
        "size     loop           forward ms  backward ms  optimizer ms  step ms  tokens/s  vs current  first s"
    )
    for size in sizes:
        current = None
        for loop in LOOPS:
            times = time_step(size, loop, repeats)
            current = times["step"] if loop == "current" else current
            ratio = f"{current / times['step']:.2f}x" if current else "-"
            print(
                f"{size:<8} {loop:<14} {times['forward']:>10.1f} {times['backward']:>12.1f} "
                f"{times['optimizer']:>13.1f} {times['step']:>8.1f} {times['tokens_per_s']:>9.0f} "
                f"{ratio:>11} {times['first_step_s']:>8.1f}"
            )


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
    parser.add_argument("--step", action="store_true", help="time one training step per size instead")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per size with --step")
    args = parser.parse_args()
    if args.step:
        print_step_times(args.sizes, args.repeats)
        return 0

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

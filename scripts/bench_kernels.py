"""Per-slice microbenchmark: CPU seconds of the reference (torch, float32 copies) and the fused kernels.

Merges one slice (default 4M entries, bf16 base + 4 experts, TIES-shaped task vectors) with each method
on one thread and reports `time.process_time` per call, the best of `--repeat`, and the ratio. CPU time of
one thread is meaningful on a loaded machine, unlike wall time. The fused kernels are compiled (or loaded
from numba's cache) before timing.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from mergelab.engine.fused import KernelPool
from mergelab.engine.merge import merge_tensor
from mergelab.methods import TensorContext, TrimRule, get_method

CASES = {
    "ties (tensor scope)": ("ties", {"trim_scope": "tensor"}),
    "ties (global scope, merge pass)": ("ties", {"trim_scope": "global"}),
    "dare (combine: ties)": ("dare", {"combine": "ties", "density": 0.2}),
    "dare (combine: linear)": ("dare", {"combine": "linear", "density": 0.2}),
    "task_arithmetic": ("task_arithmetic", {}),
    "average": ("average", {}),
}


def inputs(entries: int, n_experts: int, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    base = (torch.randn(entries, generator=generator) * 0.02).to(dtype)
    experts = [
        (base.float() + torch.randn(entries, generator=generator) * 0.002).to(dtype) for _ in range(n_experts)
    ]
    return base, experts


def cpu_seconds(call, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        call()
        best = min(best, time.process_time() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1 << 22, help="entries in the slice")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base, experts = inputs(args.entries, args.experts, getattr(torch, args.dtype))
    cpu = torch.device("cpu")
    print(f"{args.entries} entries, {args.experts} experts, {args.dtype}, one thread; CPU seconds per slice")
    print("| method | reference s | fused s | reference / fused |")
    print("|---|---:|---:|---:|")
    with KernelPool(1) as pool:
        for label, (name, hparams) in CASES.items():
            method = get_method(name, **hparams)
            context = TensorContext("w")
            if method.needs_global_trim:  # the merge pass only, with the cut of a tensor-scope trim
                magnitudes = [(expert.float() - base.float()).abs() for expert in experts]
                cuts = [
                    magnitude.kthvalue(magnitude.numel() - int(0.2 * magnitude.numel())).values
                    for magnitude in magnitudes
                ]
                context = TensorContext(
                    "w", trim=tuple(TrimRule(float(cut), 0) for cut in cuts), majority_sign=1.0
                )
            reference_call = partial(merge_tensor, method, base, experts, context, cpu)
            fused_call = partial(merge_tensor, method, base, experts, context, cpu, pool)
            fused_call()  # compile the kernels, or load them from numba's cache
            reference, fused = cpu_seconds(reference_call, args.repeat), cpu_seconds(fused_call, args.repeat)
            print(f"| {label} | {reference:.3f} | {fused:.3f} | {reference / fused:.1f}x |", flush=True)


if __name__ == "__main__":
    main()

"""PLeaS on two zoo experts from different bases: wall time, and per-layer function-space error of the
closed-form least-squares fit against Adam (the reference code's 400 steps, lr 5e-4, cosine) on the same
layer problems.

The merge runs once with `fit=least_squares`; at every group of linear layers the Adam solution of the same
objective (same inputs of the merged model, same targets) is computed too and only recorded, so both errors
are measured on identical problems. Error = ||X W.T - Y||^2 / ||Y||^2 over the calibration tokens, for the
aligned (partial) average, the closed form and Adam. The issue's budget: <= 5 minutes on this CPU for the
smallest size. Needs `mergelab zoo build size=xs` and `mergelab zoo build size=xs init=1`.

    python scripts/bench_pleas.py                       # xs, first two categories, init 0 vs init 1
    python scripts/bench_pleas.py --budget 1.5 --init shared
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from mergelab import zoo
from mergelab.engine.device import resolve_device
from mergelab.pleas import PleasOptions, pleas_merge_directories


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="xs", help="zoo size (default xs)")
    parser.add_argument(
        "--categories", nargs=2, default=None, help="two held-in categories (default: first two)"
    )
    parser.add_argument(
        "--init",
        choices=["different", "shared"],
        default="different",
        help="different: second expert from the init-1 base (default); shared: both from init 0",
    )
    parser.add_argument("--budget", type=float, default=1.0, help="MLP width relative to one expert")
    parser.add_argument("--n-examples", type=int, default=1600, help="calibration sequences")
    parser.add_argument("--ridge", type=float, default=1e-4, help="relative ridge of the closed form")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: no oversubscription on a shared CPU)"
    )
    return parser.parse_args()


def print_alignment_quality(base, experts, data, n_examples: int, device) -> None:
    """Mean correlation of matched units (residual stream, MLP per block): how alignable the experts are."""
    from mergelab.pleas.activations import llama_shape
    from mergelab.pleas.matching import align
    from mergelab.pleas.merge import calibration_batches, load_experts

    models = load_experts(experts, device)
    batches = calibration_batches(base, data, len(experts), n_examples)
    alignment = align(models[0], models[1], batches, llama_shape(models[0]))
    mlp = ", ".join(f"{quality.mean():.3f}" for quality in alignment.mlp_quality)
    print(f"matched correlation: residual {alignment.residual_quality.mean():.3f}, MLP per block {mlp}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    categories = args.categories or zoo.load_suite().held_in_categories[:2]
    second_init = 1 if args.init == "different" else 0
    experts = [
        zoo.model_path(args.size, "base", "expert", categories[0]),
        zoo.model_path(args.size, "base", "expert", categories[1], init=second_init),
    ]
    for path in experts:
        if not (path / "config.json").is_file():
            raise SystemExit(f"{path} is not built; run `mergelab zoo build size={args.size} init=...`")
    options = PleasOptions(budget=args.budget, n_examples=args.n_examples, ridge=args.ridge)
    base = zoo.model_path(args.size, "base", "base")
    data = [f"zoo:{category}" for category in categories]
    device = resolve_device(args.device)
    started = time.perf_counter()
    merged, report = pleas_merge_directories(base, experts, data, options, device, compare_adam=True)
    total = time.perf_counter() - started
    print_alignment_quality(base, experts, data, options.n_examples, device)
    adam_seconds = sum(fit.adam_seconds for fit in report)
    print(
        f"pleas {args.size} experts {categories[0]} (init 0) + {categories[1]} (init {second_init}), "
        f"budget {args.budget}, {args.n_examples} examples, {torch.get_num_threads()} threads on {args.device}"
    )
    print(
        f"{'layer':>5}  {'group':<22}{'average':>10}{'closed form':>13}{'adam':>10}{'solve s':>9}{'adam s':>8}"
    )
    for fit in report:
        print(
            f"{fit.layer:>5}  {fit.group:<22}{fit.average_error:>10.4f}{fit.fitted_error:>13.4f}"
            f"{fit.adam_error:>10.4f}{fit.solve_seconds:>9.3f}{fit.adam_seconds:>8.2f}"
        )
    mean = {
        key: math.fsum(getattr(fit, key) for fit in report) / len(report)
        for key in ("average_error", "fitted_error", "adam_error")
    }
    print(
        f"mean relative error: average {mean['average_error']:.4f}, closed form {mean['fitted_error']:.4f}, "
        f"adam {mean['adam_error']:.4f}"
    )
    print(
        f"merged intermediate size {merged.config.intermediate_size}; total {total:.1f} s "
        f"(PLeaS with the closed form: {total - adam_seconds:.1f} s; the Adam comparison: {adam_seconds:.1f} s)"
    )


if __name__ == "__main__":
    main()

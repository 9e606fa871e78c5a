"""Evaluate built zoo sizes and write the zoo card, results/zoo/README.md.

usage: python scripts/zoo_card.py --sizes xs s   (build them first: mergelab zoo build size=xs)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mergelab.experiment.zoo_card import (
    add_replicate_scores,
    card_notes,
    evaluate_size,
    load_size_scores,
    render_card,
)

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["xs", "s"], help="built sizes, smallest first")
    parser.add_argument("--max-examples", type=int, default=200, help="test examples per task")
    parser.add_argument(
        "--cached", action="store_true", help="re-render from the scores saved by an earlier evaluation"
    )
    parser.add_argument(
        "--add-replicates",
        action="store_true",
        help="with --cached: first score the experts of replicates built since (mergelab zoo build replicate=1)",
    )
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        help="a note for the card (repeatable; without it the notes of the card at --out are kept)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (the zoo models are tiny; 1 avoids oversubscription)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "results" / "zoo" / "README.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cached and args.add_replicates:
        for size in args.sizes:
            add_replicate_scores(size)
    ladder = [
        load_size_scores(size) if args.cached else evaluate_size(size, args.max_examples)
        for size in args.sizes
    ]
    kept = card_notes(args.out.read_text()) if args.out.is_file() else []
    card = render_card(ladder, args.note or kept)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(card)
    print(card)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

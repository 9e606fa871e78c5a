#!/usr/bin/env bash
# Build the whole zoo ladder (xs, s, m, l; both expert replicates) on a 2-core CPU and write the zoo card.
#
# Two lanes run side by side, one build per core (a build trains on one thread): xs then m, and s then l,
# so each lane holds about half of the training. Each size is scored as soon as its replicates are built
# (scripts/zoo_card.py saves the scores next to the zoo), and the card is rendered from those at the end.
#   MERGELAB_HOME=... bash scripts/build_ladder.sh      (about an hour: the third build's lanes sum to 47 and 60 minutes of training;
#   54 minutes measured on an idle 2-core machine before m and l pretrained longer, 2026-12-07)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled

lane() {
  for size in "$@"; do
    "$PY" -m mergelab.cli zoo build "size=$size"
    "$PY" -m mergelab.cli zoo build "size=$size" replicate=1
    "$PY" scripts/zoo_card.py --sizes "$size" --out "$(mktemp)" > /dev/null
  done
}

"$PY" -c "from mergelab.zoo.ladder import build_tokenizer; build_tokenizer()"  # the suite too, once
lane xs m &
small=$!
lane s l &
large=$!
wait "$small"
wait "$large"
"$PY" scripts/zoo_card.py --cached --sizes xs s m l

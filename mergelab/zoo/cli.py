"""`mergelab zoo build size=NAME|all [device=auto]` and `mergelab zoo list`."""

from __future__ import annotations

import json
import sys

from mergelab.zoo.cache import ZooError, read_manifest, zoo_home
from mergelab.zoo.ladder import INITS, LADDER, REPLICATES, SIZES, build, component_paths, model_path
from mergelab.zoo.suite import load_suite

USAGE = """usage: mergelab zoo build size=NAME|all [device=auto|cpu|cuda] [init=0|1] [replicate=0|1] [jobs=N]
       mergelab zoo list

Builds (once, seeded, resumable) the offline model zoo under $MERGELAB_HOME/zoo (default ~/.cache/mergelab):
for each size a base, an instruction-tuned base, an expert per held-in category from each, and a multitask
baseline from each. init=1 builds instead a second, independently initialized base of the size and an
expert per held-in category from it (for merging experts without a shared base). replicate=1 trains
every expert of both bases again with another seed (an independent expert set, for studies that average
over fine-tuning runs). jobs=N trains the
components that start from a finished base in N processes at once on the CPU (the same weights as jobs=1;
default: 1). Sizes: """ + ", ".join(SIZES)


def parse_options(args: list[str], allowed: set[str]) -> dict[str, str]:
    options = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            raise ZooError(f"unknown option '{arg}'; valid: {sorted(allowed)}")
        options[key] = value
    return options


def parse_choice(name: str, text: str, valid: tuple[int, ...]) -> int:
    """An integer option (`init=`, `replicate=`) as an int, or a ZooError naming the valid values."""
    if text not in {str(value) for value in valid}:
        raise ZooError(f"unknown option value '{name}={text}'; valid: {', '.join(map(str, valid))}")
    return int(text)


def parse_jobs(text: str) -> int:
    """The `jobs=` option as a positive int, or a ZooError naming it."""
    if not text.isdigit() or int(text) < 1:
        raise ZooError(f"bad option value 'jobs={text}'; give a positive number of worker processes")
    return int(text)


def list_zoo() -> None:
    suite = load_suite()
    components = 2 + 2 * (len(suite.held_in_categories) + 1)
    print(f"zoo at {zoo_home()}")
    print(
        f"{'size':<7}{'parameters':>11}{'built':>8}{'val loss':>10}{'train s':>9}  device  held-in(expert) held-out(it)"
    )
    for size in SIZES:
        manifests = [m for m in map(read_manifest, component_paths(size).values()) if m]
        if not manifests:
            continue
        base = read_manifest(model_path(size, "base", "base")) or {}
        scores = _scores(size)
        print(
            f"{size:<7}{base.get('parameters', 0):>11,}{len(manifests):>5}/{components:<2}"
            f"{base.get('val_loss', float('nan')):>10.3f}{sum(m['seconds'] for m in manifests):>9.0f}  "
            f"{base.get('device', '?'):<7} {scores}"
        )


def _scores(size: str) -> str:
    path = zoo_home() / size / "scores.json"
    if not path.exists():
        return "(run scripts/zoo_card.py for scores)"
    scores = json.loads(path.read_text())
    return f"{scores.get('expert_held_in', float('nan')):.3f}           {scores.get('it_held_out', float('nan')):.3f}"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0
    try:
        if argv[0] == "list":
            list_zoo()
            return 0
        if argv[0] != "build":
            raise ZooError(f"unknown zoo command '{argv[0]}'; valid: build, list")
        options = parse_options(argv[1:], {"size", "device", "init", "replicate", "jobs"})
        size = options.get("size", LADDER[0])
        sizes = LADDER if size == "all" else [size]
        init = parse_choice("init", options.get("init", "0"), INITS)
        replicate = parse_choice("replicate", options.get("replicate", "0"), REPLICATES)
        jobs = parse_jobs(options.get("jobs", "1"))
        for name in sizes:
            build(name, device=options.get("device", "auto"), init=init, jobs=jobs, replicate=replicate)
        return 0
    except ZooError as error:
        print(f"mergelab zoo: error: {error}", file=sys.stderr)
        return 2

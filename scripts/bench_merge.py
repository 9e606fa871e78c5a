"""Benchmark: mergelab against mergekit and against the I/O floor, on synthetic checkpoints, at two sizes.

Builds a base and experts of a Llama-shaped model on disk (bf16, sharded; default ~0.5B parameters, 4
experts), then times, each in its own subprocess with its peak RSS, on the same inputs: the I/O floor
(read every input byte once, write an output of the same size), mergelab `ties` (tensor and global trim
scope), mergelab `dare` (`combine: ties`), mergelab `task_arithmetic`, and mergekit `ties` (`normalize:
true`, float32 compute, bf16 output, absolute paths, HF_HUB_OFFLINE=1). A second size (`--second-layers`,
default twice the layers) shows how time and peak memory scale. All runs see a warm page cache (the floor
runs first and reads every input) and numba's compiled kernels in its cache (every mergelab merge runs once
on a tiny model first). Equality with mergekit is checked twice at the first size: on the timed
bf16 outputs (max difference and fraction of differing entries; both round float32 results to bf16, so a
last-bit flip is possible) and, strictly, on a small float32 copy of the same architecture (tolerance
1e-6). Writes a markdown table under results/bench/.

Wall time means something only on an otherwise idle machine: the script prints the 1-minute load average
before and after, and CPU seconds (user + system, all threads) beside wall time.

mergekit comes from the `bench` extra (`pip install -e .[bench]`); to keep it out of the project
environment, install it in its own venv (`python3 -m venv .venv-bench && .venv-bench/bin/pip install
torch==2.13.0 mergekit==0.1.5`) and the script finds `.venv-bench/bin/mergekit-yaml`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mergelab.methods import TensorContext
from mergelab.methods.ties import Ties
from mergelab.methods.trim import tensor_trim_rule

REPO = Path(__file__).resolve().parents[1]
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS = 896, 4864, 14, 2  # Qwen2.5-0.5B's block shapes


def llama_config(layers: int, vocab: int, hidden: int = HIDDEN, intermediate: int = INTERMEDIATE) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": hidden // HEADS,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "lm_head.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
    }
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        shapes |= {
            prefix + "self_attn.q_proj.weight": (hidden, hidden),
            prefix + "self_attn.k_proj.weight": (kv, hidden),
            prefix + "self_attn.v_proj.weight": (kv, hidden),
            prefix + "self_attn.o_proj.weight": (hidden, hidden),
            prefix + "mlp.gate_proj.weight": (inter, hidden),
            prefix + "mlp.up_proj.weight": (inter, hidden),
            prefix + "mlp.down_proj.weight": (hidden, inter),
            prefix + "input_layernorm.weight": (hidden,),
            prefix + "post_attention_layernorm.weight": (hidden,),
        }
    return shapes


def write_model(
    path: Path,
    config: dict,
    dtype: torch.dtype,
    seed: int,
    base_seed: int | None,
    shard_bytes: int = 400_000_000,
) -> None:
    """A sharded model dir; experts are the base (regenerated from `base_seed`) plus seeded noise."""
    if (path / "model.safetensors.index.json").exists():
        return
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    shapes = tensor_shapes(config)
    shard: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    shard_names: list[str] = []

    def flush() -> None:
        name = f"model-{len(shard_names) + 1:05d}.safetensors"
        save_file(shard, partial / name, metadata={"format": "pt"})
        weight_map.update({tensor: name for tensor in shard})
        shard_names.append(name)
        shard.clear()

    for index, (name, shape) in enumerate(sorted(shapes.items())):
        generator = torch.Generator().manual_seed(
            (base_seed if base_seed is not None else seed) * 100_003 + index
        )
        tensor = torch.randn(shape, generator=generator) * 0.02
        if base_seed is not None:
            noise = torch.Generator().manual_seed(seed * 100_003 + index)
            tensor += torch.randn(shape, generator=noise) * 0.002
        shard[name] = tensor.to(dtype)
        if sum(t.numel() * t.element_size() for t in shard.values()) >= shard_bytes:
            flush()
    if shard:
        flush()
    total = sum(path_.stat().st_size for path_ in partial.glob("*.safetensors"))
    (partial / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    (partial / "config.json").write_text(
        json.dumps(config | {"torch_dtype": str(dtype).removeprefix("torch.")})
    )
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)


def build(root: Path, config: dict, n_experts: int, dtype: torch.dtype) -> tuple[Path, list[Path]]:
    base = root / "base"
    write_model(base, config, dtype, seed=1, base_seed=None)
    experts = [root / f"expert{i}" for i in range(n_experts)]
    for index, expert in enumerate(experts):
        write_model(expert, config, dtype, seed=10 + index, base_seed=1)
    return base, experts


class Measurement(NamedTuple):
    """One timed subprocess: wall seconds, CPU seconds (user + system, all threads) and peak RSS bytes."""

    wall: float
    cpu: float
    rss: int


# Linux carries the parent's peak RSS into a child that is forked (or vforked) and then execs, so a child
# of this script, which holds tensors while it compares outputs, would report at least this script's peak.
# The command therefore runs as the child of a small wrapper process, which reports its rusage.
RUSAGE_WRAPPER = """
import os, sys, time
report, command = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(command[0], command)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as handle:
    handle.write(f"{time.perf_counter() - started} {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss * 1024}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(command: list[str], env: dict | None = None) -> Measurement:
    """Time `command` in a subprocess. CPU seconds are reported beside wall time because on a shared
    machine wall time also counts waiting for a core; peak RSS is the command's own (ru_maxrss, measured
    under `RUSAGE_WRAPPER` so that this script's memory does not leak into it)."""
    with tempfile.TemporaryDirectory() as scratch:
        report, errors = Path(scratch) / "rusage", Path(scratch) / "stderr"
        with errors.open("wb") as stderr:
            finished = subprocess.run(
                [sys.executable, "-c", RUSAGE_WRAPPER, str(report), *command],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        if finished.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({finished.returncode}): {errors.read_text()[-2000:]}")
        wall, cpu, rss = report.read_text().split()
    return Measurement(float(wall), float(cpu), int(rss))


IO_FLOOR = """
import sys
inputs, out, size = sys.argv[1:-2], sys.argv[-2], int(sys.argv[-1])
buffer = bytearray(16 << 20)
view = memoryview(buffer)
for path in inputs:
    with open(path, 'rb', buffering=0) as handle:
        while handle.readinto(buffer):
            pass
with open(out, 'wb') as handle:
    while size > 0:
        size -= handle.write(view[: min(size, len(buffer))])
"""


def weight_files(model: Path) -> list[str]:
    return [str(path) for path in sorted(model.glob("*.safetensors"))]


MERGELAB_RUNS = {
    "mergelab ties (trim_scope: tensor)": ("ties", {"trim_scope": "tensor"}),
    "mergelab ties (trim_scope: global)": ("ties", {"trim_scope": "global"}),
    "mergelab dare (combine: ties)": ("dare", {"combine": "ties"}),
    "mergelab task_arithmetic": ("task_arithmetic", {}),
}
TENSOR_TIES = "mergelab ties (trim_scope: tensor)"
MERGEKIT_TIES = "mergekit ties (normalize: true, float32 compute)"
IO_FLOOR_RUN = "I/O floor (read inputs, write output)"


def mergelab_command(
    base: Path,
    experts: list[Path],
    out: Path,
    method: str,
    hparams: dict,
    density: float,
    device: str,
    threads: int | None = None,
) -> list[str]:
    """`mergelab merge` of `method`; trimming methods get `density` (TIES and DARE alike)."""
    options = {**hparams, **({"density": density} if method in ("ties", "dare") else {})}
    return [
        sys.executable,
        "-m",
        "mergelab.cli",
        "merge",
        f"merge={method}",
        f"base={base}",
        f"experts=[{','.join(map(str, experts))}]",
        f"out={out}",
        *(f"merge.{key}={value}" for key, value in options.items()),
        f"device={device}",
        "progress=false",
        "overwrite=true",
        *([f"threads={threads}"] if threads else []),
    ]


def mergekit_command(
    mergekit_yaml: str,
    base: Path,
    experts: list[Path],
    out: Path,
    density: float,
    out_dtype: str,
    device: str,
) -> list[str]:
    config = {
        "merge_method": "ties",
        "base_model": str(base.resolve()),
        "models": [
            {"model": str(e.resolve()), "parameters": {"density": density, "weight": 1.0}} for e in experts
        ],
        "parameters": {"normalize": True},
        "dtype": "float32",
        "out_dtype": out_dtype,
    }
    config_path = out.with_suffix(".yml")
    config_path.write_text(json.dumps(config))  # JSON is YAML
    shutil.rmtree(out, ignore_errors=True)
    return [mergekit_yaml, str(config_path), str(out), "--no-copy-tokenizer", "--quiet"] + (
        ["--cuda"] if device == "cuda" else []
    )


def load_tensors(model: Path, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(model.glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            for name in handle.keys():
                if names is None or name in names:
                    tensors[name] = handle.get_tensor(name)
    return tensors


def compare(
    ours: Path,
    theirs: Path,
    base: Path | None = None,
    experts: list[Path] | None = None,
    density: float = 0.2,
) -> tuple[float, int, int, int]:
    """Max |diff| in float32, entries differing, entries in all, and how many differing entries the two
    documented rule differences explain: a magnitude tied at an expert's trim cut (mergekit's unstable
    argsort and mergelab's first-in-order rule keep different entries) or a zero vote (kept values cancel
    exactly; mergelab takes the majority sign as the paper's code, mergekit takes +). Streams tensor by tensor.
    """
    method = Ties(density=density, trim_scope="tensor")
    worst, differing, total, explained = 0.0, 0, 0, 0
    for name in json_names(ours):
        a, b = load_tensors(ours, [name])[name].float(), load_tensors(theirs, [name])[name].float()
        diff = a != b
        worst = max(worst, (a - b).abs().max().item())
        differing += int(diff.sum())
        total += diff.numel()
        if base is not None and diff.any():
            base_tensor = load_tensors(base, [name])[name].float()
            expert_tensors = [load_tensors(expert, [name])[name].float() for expert in experts]
            tied = torch.zeros_like(diff)
            for expert_tensor in expert_tensors:
                magnitude = (expert_tensor - base_tensor).abs()
                tied |= magnitude == tensor_trim_rule(magnitude, density).threshold
            trimmed = method.trimmed_task_vectors(base_tensor, expert_tensors, TensorContext(name))
            zero_vote = (trimmed.sum(0) == 0) & (trimmed != 0).any(0)
            explained += int((diff & (tied | zero_vote)).sum())
    return worst, differing, total, explained


def json_names(model: Path) -> list[str]:
    names: list[str] = []
    for file in sorted(model.glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            names.extend(handle.keys())
    return names


def find_mergekit(explicit: str | None) -> str | None:
    candidates = [
        explicit,
        shutil.which("mergekit-yaml"),
        REPO / ".venv/bin/mergekit-yaml",
        REPO / ".venv-bench/bin/mergekit-yaml",
    ]
    return next((str(c) for c in candidates if c and Path(c).exists()), None)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--layers", type=int, default=24, help="transformer blocks (24 ~ 0.5B with --vocab 65536)"
    )
    parser.add_argument(
        "--second-layers", type=int, default=None, help="layers of the second size (default 2x; 0: none)"
    )
    parser.add_argument("--vocab", type=int, default=65536, help="vocabulary size (untied embeddings)")
    parser.add_argument("--experts", type=int, default=4, help="number of synthetic experts")
    parser.add_argument("--density", type=float, default=0.2, help="TIES and DARE density for every run")
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="compute device of both tools"
    )
    parser.add_argument("--threads", type=int, help="mergelab's threads= (default: all cores)")
    parser.add_argument(
        "--workdir", type=Path, default=Path("/tmp/mergelab-bench"), help="synthetic checkpoints and outputs"
    )
    parser.add_argument("--mergekit-yaml", help="path to mergekit-yaml (default: PATH, .venv, .venv-bench)")
    parser.add_argument(
        "--results", type=Path, default=REPO / "results" / "bench", help="where the table goes"
    )
    args = parser.parse_args()
    second = 2 * args.layers if args.second_layers is None else args.second_layers

    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    mergekit_yaml = find_mergekit(args.mergekit_yaml)
    warm_kernels(args, env)
    load_before = os.getloadavg()[0]
    sizes = [
        run_size(args, layers, env, mergekit_yaml, first=index == 0)
        for index, layers in enumerate([args.layers, *([second] if second else [])])
    ]
    equality = sizes[0].equality
    if mergekit_yaml:
        equality += "; " + strict_check(args, env, mergekit_yaml)
    load = (load_before, os.getloadavg()[0])
    table = render(sizes, args, equality, load)
    print(table)
    args.results.mkdir(parents=True, exist_ok=True)
    target = args.results / f"merge_{args.device}.md"
    target.write_text(table)
    print(f"wrote {target}")
    return 0


def warm_kernels(args, env: dict) -> None:
    """Run every mergelab merge once, untimed, on a tiny model of the same dtype and expert count, so the
    timed runs load numba's compiled kernels from its cache instead of compiling them."""
    root = args.workdir / f"warm_e{args.experts}"
    base, experts = build(
        root, llama_config(1, 256, hidden=112, intermediate=128), args.experts, torch.bfloat16
    )
    for method, hparams in MERGELAB_RUNS.values():
        command = mergelab_command(
            base, experts, root / "out", method, hparams, args.density, args.device, args.threads
        )
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)


class SizeResult(NamedTuple):
    """One model size's measurements, by run name, and the equality check (first size only)."""

    layers: int
    params: int
    input_bytes: int
    rows: dict[str, Measurement]
    equality: str


def run_size(args, layers: int, env: dict, mergekit_yaml: str | None, first: bool) -> SizeResult:
    """Build one size's checkpoints and time every run on them."""
    config = llama_config(layers, args.vocab)
    params = sum(torch.Size(shape).numel() for shape in tensor_shapes(config).values())
    root = args.workdir / f"l{layers}_v{args.vocab}_e{args.experts}"
    print(
        f"building {args.experts} experts + base of {params / 1e6:.0f}M parameters (bf16) in {root}",
        flush=True,
    )
    base, experts = build(root, config, args.experts, torch.bfloat16)
    inputs = [f for model in (base, *experts) for f in weight_files(model)]
    input_bytes = sum(Path(f).stat().st_size for f in inputs)
    rows: dict[str, Measurement] = {}
    floor_out = args.workdir / "io_floor.bin"
    rows[IO_FLOOR_RUN] = measure([sys.executable, "-c", IO_FLOOR, *inputs, str(floor_out), str(params * 2)])
    floor_out.unlink()
    out = args.workdir / "mergelab_out"
    tensor_out = args.workdir / "mergelab_tensor"
    for name, (method, hparams) in MERGELAB_RUNS.items():
        print(f"{name} ({layers} layers) ...", flush=True)
        target = tensor_out if name == TENSOR_TIES else out
        command = mergelab_command(
            base, experts, target, method, hparams, args.density, args.device, args.threads
        )
        rows[name] = measure(command, env)
    shutil.rmtree(out, ignore_errors=True)
    equality = "mergekit not found: install the bench extra"
    if mergekit_yaml:
        print(f"mergekit ties ({layers} layers) ...", flush=True)
        mergekit_out = args.workdir / "mergekit"
        rows[MERGEKIT_TIES] = measure(
            mergekit_command(
                mergekit_yaml, base, experts, mergekit_out, args.density, "bfloat16", args.device
            ),
            env,
        )
        if first:
            worst, differing, total, at_ties = compare(tensor_out, mergekit_out, base, experts, args.density)
            equality = (
                f"timed bf16 outputs ({layers} layers): {differing} of {total} entries differ (max |diff| "
                f"{worst:.3g}), {at_ties} of them where the documented rules differ and bf16 values make it "
                f"common: a task-vector magnitude tied at an expert's trim cut (mergekit's unstable argsort vs "
                f"mergelab's first-in-order rule) or kept values that cancel exactly (zero vote: majority sign "
                f"as the paper's code vs mergekit's +)"
            )
        shutil.rmtree(mergekit_out, ignore_errors=True)
    shutil.rmtree(tensor_out, ignore_errors=True)
    return SizeResult(layers, params, input_bytes, rows, equality)


def strict_check(args, env: dict, mergekit_yaml: str) -> str:
    """mergelab tensor-scope TIES vs mergekit on a small float32 model: must agree to 1e-6."""
    config = llama_config(2, 4096, hidden=224, intermediate=512)
    root = args.workdir / "strict_fp32"
    base, experts = build(root, config, args.experts, torch.float32)
    ours, theirs = root / "mergelab", root / "mergekit"
    subprocess.run(
        mergelab_command(base, experts, ours, "ties", {"trim_scope": "tensor"}, args.density, args.device),
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        mergekit_command(mergekit_yaml, base, experts, theirs, args.density, "float32", args.device),
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worst, *_ = compare(ours, theirs)
    verdict = "PASS" if worst <= 1e-6 else "FAIL"
    return f"float32 check on a 2-layer copy: max |diff| {worst:.3g} ({verdict} at tolerance 1e-6)"


def render(
    sizes: list[SizeResult], args: argparse.Namespace, equality: str, load: tuple[float, float]
) -> str:
    """The markdown report: machine, sizes, date, command, a table per size with ratios, the scaling
    between the sizes, and the equality check."""
    first = sizes[0]
    described = " and ".join(
        f"{size.layers} layers ({size.params / 1e6:.0f}M parameters each, {size.input_bytes / 2**30:.2f} GiB read)"
        for size in sizes
    )
    second = f" --second-layers {sizes[1].layers}" if len(sizes) > 1 else " --second-layers 0"
    lines = [
        f"# Merge benchmark ({args.device})",
        "",
        f"{datetime.date.today()}, {platform.node()}, {os.cpu_count()} CPU cores, torch {torch.__version__}. "
        f"Base + {args.experts} experts of a Llama-shaped model, bf16, sharded, at {described}; "
        f"TIES and DARE density {args.density}; warm page cache. "
        f"1-minute load average {load[0]:.1f} before and {load[1]:.1f} after the runs (CPU seconds, "
        "user + system over all threads, are given beside wall time).",
        f"Command: `python scripts/bench_merge.py --layers {first.layers}{second} --vocab {args.vocab} "
        f"--experts {args.experts} --device {args.device}"
        + (f" --threads {args.threads}" if args.threads else "")
        + "`",
    ]
    for size in sizes:
        lines += ["", f"## {size.layers} layers ({size.params / 1e6:.0f}M parameters)", "", *size_table(size)]
    if len(sizes) > 1:
        small, large = sizes
        lines += [
            "",
            f"## Scaling: {large.layers} layers over {small.layers} layers "
            f"({large.params / small.params:.2f}x the parameters)",
            "",
            "| run | wall ratio | CPU ratio | peak RSS ratio |",
            "|---|---:|---:|---:|",
        ]
        for name, row in large.rows.items():
            before = small.rows[name]
            lines.append(
                f"| {name} | {row.wall / before.wall:.2f} | {row.cpu / before.cpu:.2f} | {row.rss / before.rss:.2f} |"
            )
    lines += ["", f"Equality with mergekit: {equality}.", ""]
    return "\n".join(lines)


def size_table(size: SizeResult) -> list[str]:
    floor = size.rows[IO_FLOOR_RUN]
    mergekit = size.rows.get(MERGEKIT_TIES)
    tensor_ties = size.rows[TENSOR_TIES]
    lines = [
        "| run | wall s | CPU s | peak RSS GiB | wall / mergekit | CPU / mergekit | RSS / mergekit "
        "| wall / I/O floor | wall / tensor-scope TIES |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in size.rows.items():
        versus = (
            (
                f"{row.wall / mergekit.wall:.2f}",
                f"{row.cpu / mergekit.cpu:.2f}",
                f"{row.rss / mergekit.rss:.2f}",
            )
            if mergekit
            else ("-", "-", "-")
        )
        lines.append(
            f"| {name} | {row.wall:.1f} | {row.cpu:.1f} | {row.rss / 2**30:.2f} | {' | '.join(versus)} "
            f"| {row.wall / floor.wall:.2f} | {row.wall / tensor_ties.wall:.2f} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())

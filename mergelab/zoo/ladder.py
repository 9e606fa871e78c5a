"""The model ladder: for each size a base, an instruction-tuned base ("it"), an expert per held-in category
from each, and a multitask baseline from each, trained once, seeded, and cached as Hugging Face model dirs.

A size can also have a second, independently initialized base (`init=1`: another seed for the weights and
the pretraining data order) with its own experts, for merging experts that do not share a base (PLeaS).
Its components live under `<size>/init1/`; the default `init=0` paths and manifests are unchanged.

A size can also have further replicates of its experts (`replicate=1`: every expert of both bases trained
again from the same base with another seed, i.e. another data order), so that a study can tell the effect
of a merge from the luck of one fine-tuning run. Replicate r's experts live under `<kind>/experts_r<r>/`.

A component is rebuilt when its directory is missing or its manifest's weight digest does not match, so an
interrupted or corrupted build resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from mergelab.zoo.cache import ZooError, atomic_directory, read_manifest, write_manifest, zoo_home
from mergelab.zoo.suite import TaskSuite, build_suite, corpus_lines, load_suite, load_task
from mergelab.zoo.tokenizer import VOCABULARY_FILE, word_tokenizer, zoo_vocabulary
from mergelab.zoo.train import answer_batches, packed_batches, stream_loss, train_loop

BASE_KINDS = ("base", "it")
ROLES = ("base", "expert", "multitask")
INITS = (0, 1)  # init 1: a second pretrain from another seed, with only its base and experts
INIT_SEED_STEP = 1000  # the pretrain seed of init i is spec.seed + INIT_SEED_STEP * i
REPLICATES = (0, 1)  # independently fine-tuned copies of every expert (replicate 0: the default experts)
REPLICATE_SEED_STEP = 1000  # the fine-tuning seed of an expert of replicate r is its seed + this * r
# Times each train example of a task is repeated in a fine-tuning mixture: the generative tasks that need
# the most steps get more of them (the other task of their category is a classification).
TASK_WEIGHTS = {"reverse_words": 2}


@dataclass(frozen=True)
class SizeSpec:
    """Architecture and training budget of one zoo size (compute grows with size)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    pretrain_steps: int
    it_steps: int
    expert_steps: int
    multitask_steps: int
    batch_size: int = 32
    seq_len: int = 64
    pretrain_lr: float = 3e-3
    finetune_lr: float = 1e-3
    seed: int = 0
    cpu_threads: int = 1  # fixed per size: CPU float results depend on the thread count
    rehearsal_batch: int = 8  # pretraining windows per fine-tuning step (see train.train_loop)
    # The instruction tuning rehearses more (and runs few steps) so that it keeps the pretrained base's
    # text completion, which the held-out tasks need: measured on xs (suite v3), 200 steps with 16 windows
    # 0.687 held-out vs 0.581 for 400 steps with 8 (the pretrained base: 0.654). At xs and s (suite v4)
    # the rehearsal also weighs 3 times the task loss: xs 0.645 held-out vs 0.622 with weight 1 and 16
    # windows (pretrained base 0.629; other step counts, windows and weights 0.60-0.65, see results/zoo),
    # s 0.721 vs 0.677 (pretrained base 0.684). The m and l recipes were chosen on the held-out tasks' train
    # splits (300 examples per task, items no component trains on) over five (m) and six (l) recipes, on their
    # longer-pretrained bases (2026-12-07): m 32 windows weighted 3x (0.680; the pretrained base 0.665, 200
    # steps at weight 1 0.660), l 100 steps at weight 1 (0.689; the base 0.680, 200 steps 0.663). With suite
    # v9 xs rehearses 64 windows: on the same train splits 0.845 (the pretrained base 0.813; 32 windows 0.838,
    # weight 6 0.841, 400 steps 0.835, 100 steps 0.805), the recipe that keeps the most place completion.
    # Those train-split items ask about the entities the mixture trains on, which favours the tuned model:
    # on entities held back from the mixture (scripts/it_recipe_trial.py) no xs recipe moves its held-out
    # score beyond the seeds' spread, and m's 200 steps at 7e-4 read 0.859 against its pretrained base's
    # 0.914 (two seeds); m now tunes gently, 100 steps at 1.5e-4 (0.919; 3.5e-4 0.901, 2.5e-4 0.915), as
    # chosen there (results/zoo/README.md).
    it_rehearsal_batch: int = 16
    it_rehearsal_weight: float = 1.0
    it_lr: float | None = None  # the instruction tuning's learning rate (None: finetune_lr)
    # The share of its own weight change that the it base keeps: below 1 its weights lie that far along the
    # line from the pretrained base to the tuned model (WiSE-FT, Wortsman et al. 2022), which keeps more of
    # what the pretrained base knows about entities the tuning never asks about. Chosen at xs on the
    # held-back entities of scripts/it_recipe_trial.py, three tuning seeds each (pretrained base 0.825):
    # share 1 0.827 / 0.799 / 0.794, 0.75 0.837 / 0.803 / 0.825, 0.5 0.841 / 0.837 / 0.844, 0.25 0.839 /
    # 0.833 / 0.836 (results/zoo/README.md).
    it_interpolation: float = 1.0
    # Categories whose experts train for a multiple of `expert_steps`: longer, the ones that missed the zoo
    # card's gate as built with suite v4 (xs place r1 0.87; l words 0.37, +0.285 over its base); shorter,
    # the SHORT_EXPERT_CATEGORIES, which fits the ladder into its CPU budget.
    expert_step_scale: dict[str, float] = field(default_factory=dict)

    def steps_for_expert(self, category: str) -> int:
        """Fine-tuning steps of one held-in category's expert."""
        return round(self.expert_steps * self.expert_step_scale.get(category, 1.0))


# The categories whose experts reach their gate with a fraction of the steps (validation split, experts
# trained from the built bases; results/zoo/README.md): classification and lookup. The generative words and
# arithmetic experts keep every step (at 0.4-0.45 of them arithmetic fell on test from 0.97-0.99 to
# 0.14-0.41 at l and 0.73-0.93 at m).
SHORT_EXPERT_CATEGORIES = ("color", "place", "food", "size", "number", "friend")

SIZES: dict[str, SizeSpec] = {
    "micro": SizeSpec(
        hidden=32,
        layers=1,
        heads=2,
        intermediate=64,
        pretrain_steps=120,
        it_steps=40,
        expert_steps=30,
        multitask_steps=60,
        batch_size=16,
        seq_len=48,
    ),
    "xs": SizeSpec(
        hidden=64,
        layers=2,
        heads=4,
        intermediate=128,
        pretrain_steps=3000,
        it_steps=200,
        expert_steps=1500,
        multitask_steps=3000,
        it_rehearsal_batch=64,
        it_rehearsal_weight=3.0,
        it_interpolation=0.5,
        # place: 0.6 of the 1.5x it took to pass the gate as built with suite v4 (place r1 0.87 at 1x)
        expert_step_scale=dict.fromkeys(SHORT_EXPERT_CATEGORIES, 0.6) | {"place": 0.9},
    ),
    "s": SizeSpec(
        hidden=128,
        layers=3,
        heads=4,
        intermediate=256,
        pretrain_steps=2000,
        it_steps=200,
        expert_steps=600,
        multitask_steps=900,
        pretrain_lr=2e-3,
        rehearsal_batch=4,
        it_rehearsal_weight=3.0,
        # size at 0.6 of its steps: 0.88-0.89 on test (validation 0.98), below the gate's 0.9
        expert_step_scale=dict.fromkeys(SHORT_EXPERT_CATEGORIES, 0.6) | {"size": 1.0},
    ),
    # m and l pretrain long enough for the validation loss to fall along the ladder (measured 2026-12-07:
    # m 1,500 steps at 1.5e-3 0.958, 5,000 at 1.5e-3 0.943, 3,500 at 1e-3 0.930; l 1,200 steps 0.962,
    # 3,000 steps 0.930; s 0.940, xs 0.952).
    "m": SizeSpec(
        hidden=192,
        layers=4,
        heads=6,
        intermediate=512,
        pretrain_steps=3500,
        it_steps=100,
        expert_steps=400,
        multitask_steps=600,
        pretrain_lr=1e-3,
        finetune_lr=7e-4,
        rehearsal_batch=4,
        it_rehearsal_batch=32,
        it_rehearsal_weight=3.0,
        it_lr=1.5e-4,
        expert_step_scale=dict.fromkeys(SHORT_EXPERT_CATEGORIES, 0.45),
    ),
    "l": SizeSpec(
        hidden=256,
        layers=4,
        heads=8,
        intermediate=768,
        pretrain_steps=3000,
        it_steps=100,
        expert_steps=300,
        multitask_steps=450,
        pretrain_lr=1e-3,
        finetune_lr=5e-4,
        rehearsal_batch=4,
        expert_step_scale=dict.fromkeys(SHORT_EXPERT_CATEGORIES, 0.4) | {"words": 2.0},
    ),
}
LADDER = ["xs", "s", "m", "l"]


def resolve_device(device: str) -> torch.device:
    return torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu")
    )


def size_config(spec: SizeSpec, vocab_size: int, **token_ids: int | None) -> LlamaConfig:
    """The Llama architecture of one zoo size (tied embeddings, no grouped-query attention)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        **token_ids,
    )


def model_path(
    size: str, base_kind: str, role: str, category: str | None = None, init: int = 0, replicate: int = 0
) -> Path:
    """Directory of one zoo component (see the module docstring for the roles, inits and replicates)."""
    if size not in SIZES:
        raise ZooError(f"unknown zoo size '{size}'; valid: {list(SIZES)}")
    if base_kind not in BASE_KINDS or role not in ROLES:
        raise ZooError(f"base_kind must be one of {BASE_KINDS} and role one of {ROLES}")
    check_init(init, base_kind, role)
    check_replicate(replicate, init, role)
    root = zoo_home() / size / (f"init{init}" if init else "") / base_kind
    if role == "expert":
        if category is None:
            raise ZooError("an expert needs its category")
        return root / (f"experts_r{replicate}" if replicate else "experts") / category
    return root / role


def check_init(init: int, base_kind: str = "base", role: str = "base") -> None:
    """A second init has only a pretrained base and its experts; anything else is an error naming it."""
    if init not in INITS:
        raise ZooError(f"unknown zoo init {init!r}; valid: {list(INITS)}")
    if init and (base_kind != "base" or role == "multitask"):
        raise ZooError(
            f"zoo init {init} has only base_kind 'base' with roles 'base' and 'expert' "
            f"(asked for {base_kind}/{role})"
        )


def check_replicate(replicate: int, init: int = 0, role: str = "expert") -> None:
    """Replicates exist for the experts of init 0 only; anything else is an error naming it."""
    if replicate not in REPLICATES:
        raise ZooError(f"unknown zoo replicate {replicate!r}; valid: {list(REPLICATES)}")
    if replicate and (init or role != "expert"):
        raise ZooError(
            f"zoo replicate {replicate} has only experts of init 0 (asked for init {init}, role {role})"
        )


def tokenizer_path() -> Path:
    return zoo_home() / "tokenizer"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The zoo tokenizer over the pinned vocabulary, saved once; every word the corpus and the suite use
    must be in that vocabulary."""
    path = tokenizer_path()
    if not (path / "tokenizer.json").exists():
        build_suite()
        words = zoo_vocabulary()
        known = set(words)
        unknown = set()
        for text in _suite_texts():
            unknown.update(word for word in text.split() if word not in known)
        if unknown:
            raise ZooError(f"words missing from the zoo vocabulary ({VOCABULARY_FILE}): {sorted(unknown)}")
        with atomic_directory(path) as staging:
            word_tokenizer(words).save_pretrained(staging)
    return AutoTokenizer.from_pretrained(path)


def _suite_texts() -> Iterator[str]:
    """Every line of the corpus and every prompt, target and choice of every task split."""
    yield from corpus_lines("train") + corpus_lines("validation")
    for name in load_suite().tasks:
        for split in ("train", "validation", "test"):
            data = load_task(name, split)
            yield from data["prompt"]
            yield from data["target"]
            yield from (choice for row in data["choices"] for choice in row)


def encode_task(tokenizer, name: str, split: str = "train") -> list[tuple[list[int], list[int]]]:
    """(prompt ids with <bos>, answer ids + <eos>) for every example of one task split."""
    return encode_examples(tokenizer, load_task(name, split))


def encode_examples(tokenizer, data) -> list[tuple[list[int], list[int]]]:
    """(prompt ids with <bos>, answer ids + <eos>) for every row (prompt, target) of `data`."""
    prompts = tokenizer(list(data["prompt"])).input_ids
    answers = tokenizer(list(data["target"]), add_special_tokens=False).input_ids
    return [(prompt, answer + [tokenizer.eos_token_id]) for prompt, answer in zip(prompts, answers)]


def encoded_corpus(split: str) -> torch.Tensor:
    """The zoo tokenizer's ids of one corpus split, encoded once per process for each version of the corpus
    and tokenizer files: a build's worker process trains many components in turn, and encoding the corpus
    cost each of them 1.3 s."""
    files = (build_suite() / f"corpus_{split}.txt", tokenizer_path() / "tokenizer.json")
    build_tokenizer()
    versions = tuple((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in files)
    return _encoded_corpus(split, versions)


@functools.lru_cache(maxsize=4)
def _encoded_corpus(split: str, versions: tuple[tuple[str, int, int], ...]) -> torch.Tensor:
    text = " ".join(corpus_lines(split))
    return torch.tensor(build_tokenizer()(text, add_special_tokens=False).input_ids)


@torch.no_grad()
def interpolate_from(model: torch.nn.Module, start_weights: dict[str, torch.Tensor], share: float) -> None:
    """Move each of `model`'s parameters back toward its value in `start_weights`, keeping `share` of the
    change (tied parameters once: `named_parameters` lists a shared tensor under one name)."""
    for name, weight in model.named_parameters():
        weight.copy_(torch.lerp(start_weights[name], weight, share))


def _save(model, tokenizer, path: Path, manifest: dict) -> None:
    with atomic_directory(path) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_manifest(staging, manifest)


def _component(path: Path, name: str, train, report: list[dict], only: set[str] | None = None) -> None:
    """Train and save one component unless an intact copy is cached (or it is not among `only`)."""
    if only is not None and name not in only:
        return
    cached = read_manifest(path)
    if cached is None:
        started = time.perf_counter()
        try:
            model, metrics = train()
        except (MemoryError, torch.OutOfMemoryError) as error:
            raise ZooError(f"out of memory while training {path}; nothing was written ({error})") from None
        except RuntimeError as error:
            if "can't allocate memory" not in str(error):
                raise
            raise ZooError(f"out of memory while training {path}; nothing was written ({error})") from None
        metrics |= {"component": name, "seconds": round(time.perf_counter() - started, 2)}
        _save(model, build_tokenizer(), path, metrics)
        cached = read_manifest(path)
    report.append(cached)


@contextlib.contextmanager
def _build_environment(spec: SizeSpec, compute: torch.device) -> Iterator[None]:
    """Deterministic kernels, the size's fixed CPU thread count, and quiet library progress bars."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if compute.type == "cpu":
        torch.set_num_threads(spec.cpu_threads)
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        hf_logging.enable_progress_bar()
        datasets.enable_progress_bars()


def build(
    size: str, device: str = "auto", progress: bool = True, init: int = 0, jobs: int = 1, replicate: int = 0
) -> list[dict]:
    """Build every missing component of `size` (of its second base with `init=1`; the bases and the experts
    of expert replicate `replicate` with `replicate` > 0); returns their manifests.

    With `jobs` > 1 on the CPU, the components that start from a finished base (experts, multitask) train
    in that many worker processes at once, each at the size's thread count: every component is seeded on
    its own, so the weights are the same as with `jobs=1`, and a 2-core machine builds in about half the
    wall time."""
    spec = SIZES.get(size)
    if spec is None:
        raise ZooError(f"unknown zoo size '{size}'; valid: {list(SIZES)}")
    check_init(init)
    check_replicate(replicate, init)
    if jobs < 1:
        raise ZooError(f"jobs must be a positive number of worker processes, got {jobs}")
    compute = resolve_device(device)
    if jobs > 1 and compute.type == "cpu":
        _build_in_parallel(size, spec, compute, progress, init, jobs, replicate)
    with _build_environment(spec, compute):
        report = _build_components(size, spec, compute, progress, init, replicate=replicate)
    total = sum(entry["seconds"] for entry in report)
    if progress:
        print(
            f"zoo size {size}{f' init {init}' if init else ''}{f' replicate {replicate}' if replicate else ''}: "
            f"{len(report)} components ready "
            f"({total:.0f} s of training on {compute}) in {zoo_home() / size / (f'init{init}' if init else '')}"
        )
    return report


def _build_in_parallel(
    size: str, spec: SizeSpec, compute: torch.device, progress: bool, init: int, jobs: int, replicate: int
) -> None:
    """Train the bases here, then the remaining components in `jobs` worker processes, one task each."""
    with _build_environment(spec, compute):
        bases = {f"init{init}/base"} if init else {"base", "it"}
        _build_components(size, spec, compute, progress, init, only=bases)
    missing = [
        name
        for name, path in component_paths(size, init, replicate).items()
        if name not in bases and read_manifest(path) is None
    ]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = [pool.submit(_build_share, size, str(compute), init, replicate, {name}) for name in missing]
        done = concurrent.futures.as_completed(futures)
        for future in tqdm(
            done, total=len(futures), desc=f"{size} components ({jobs} jobs)", disable=not progress
        ):
            future.result()


def _build_share(size: str, device: str, init: int, replicate: int, names: set[str]) -> None:
    """One task of `_build_in_parallel`: train the named components of `size` (quietly)."""
    spec = SIZES[size]
    compute = torch.device(device)
    with _build_environment(spec, compute):
        _build_components(size, spec, compute, False, init, only=names, replicate=replicate)


def expert_name(base_kind: str, category: str, replicate: int = 0) -> str:
    """The component name (in manifests and build progress) of an init-0 expert."""
    return f"{base_kind}/expert{f'_r{replicate}' if replicate else ''}/{category}"


def component_paths(size: str, init: int = 0, replicate: int = 0) -> dict[str, Path]:
    """Each component of a size by the name its manifest carries, in build order (with `replicate` > 0:
    the two bases and that replicate's experts)."""
    categories = load_suite().held_in_categories
    if init:
        return {f"init{init}/base": model_path(size, "base", "base", init=init)} | {
            f"init{init}/base/expert/{category}": model_path(size, "base", "expert", category, init=init)
            for category in categories
        }
    paths = {"base": model_path(size, "base", "base"), "it": model_path(size, "it", "base")}
    for base_kind in BASE_KINDS:
        for category in categories:
            paths[expert_name(base_kind, category, replicate)] = model_path(
                size, base_kind, "expert", category, replicate=replicate
            )
        if not replicate:
            paths[f"{base_kind}/multitask"] = model_path(size, base_kind, "multitask")
    return paths


def _build_components(
    size: str,
    spec: SizeSpec,
    compute: torch.device,
    progress: bool,
    init: int = 0,
    only: set[str] | None = None,
    replicate: int = 0,
) -> list[dict]:
    """Train the missing components of a size in order (only those named in `only`, when given); with
    `replicate` > 0 the bases and that replicate's experts, without multitask baselines."""
    tokenizer = build_tokenizer()
    suite = load_suite()
    report: list[dict] = []
    common = (
        {"size": size, "device": str(compute), "spec": asdict(spec)}
        | ({"init": init} if init else {})
        | ({"replicate": replicate} if replicate else {})
    )
    pretrain_seed = spec.seed + INIT_SEED_STEP * init
    encoded: dict[str, list[tuple[list[int], list[int]]]] = {}

    def examples_of(tasks: list[str]) -> list[tuple[list[int], list[int]]]:
        for name in tasks:
            if name not in encoded:
                encoded[name] = encode_task(tokenizer, name)
        return [example for name in tasks for example in encoded[name] * TASK_WEIGHTS.get(name, 1)]

    def pretrain():
        config = size_config(
            spec,
            len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(pretrain_seed)
        model = LlamaForCausalLM(config)
        loss = train_loop(
            model,
            packed_batches(encoded_corpus("train"), spec.batch_size, spec.seq_len),
            steps=spec.pretrain_steps,
            learning_rate=spec.pretrain_lr,
            seed=pretrain_seed,
            device=compute,
            desc=f"{size} pretrain" + (f" init {init}" if init else ""),
            progress=progress,
        )
        val_loss = stream_loss(model, encoded_corpus("validation"), spec.seq_len, compute)
        params = sum(p.numel() for p in model.parameters())
        return model.cpu(), common | {"train_loss": loss, "val_loss": val_loss, "parameters": params}

    def finetune(
        start: Path,
        tasks: list[str],
        steps: int,
        seed: int,
        desc: str,
        rehearsal_batch: int = 0,
        rehearsal_weight: float = 1.0,
        learning_rate: float | None = None,
        interpolation: float = 1.0,
    ):
        def run():
            model = AutoModelForCausalLM.from_pretrained(start)
            start_weights = (
                {name: weight.detach().clone() for name, weight in model.named_parameters()}
                if interpolation != 1.0
                else None
            )
            loss = train_loop(
                model,
                answer_batches(examples_of(tasks), spec.batch_size, tokenizer.pad_token_id),
                steps=steps,
                learning_rate=learning_rate or spec.finetune_lr,
                seed=seed,
                device=compute,
                desc=desc,
                progress=progress,
                rehearsal=packed_batches(
                    encoded_corpus("train"), rehearsal_batch or spec.rehearsal_batch, spec.seq_len
                ),
                rehearsal_weight=rehearsal_weight,
            )
            model.cpu()
            if start_weights is not None:
                interpolate_from(model, start_weights, interpolation)
            return model, common | {"train_loss": loss, "tasks": tasks}

        return run

    base_dir = model_path(size, "base", "base", init=init)
    _component(base_dir, f"init{init}/base" if init else "base", pretrain, report, only)
    if init:
        for index, category in enumerate(suite.held_in_categories):  # the init-0 experts' seeds and data
            _component(
                model_path(size, "base", "expert", category, init=init),
                f"init{init}/base/expert/{category}",
                finetune(
                    base_dir,
                    suite.tasks_in(category),
                    spec.steps_for_expert(category),
                    100 + index,
                    f"{size} init {init} expert {category}",
                ),
                report,
                only,
            )
        return report
    _component(
        model_path(size, "it", "base"),
        "it",
        finetune(
            base_dir,
            suite.group("instruction"),
            spec.it_steps,
            spec.seed + 1,
            f"{size} it",
            spec.it_rehearsal_batch,
            spec.it_rehearsal_weight,
            spec.it_lr,
            spec.it_interpolation,
        ),
        report,
        only,
    )
    for kind_index, base_kind in enumerate(BASE_KINDS):
        start = model_path(size, base_kind, "base")
        for index, category in enumerate(suite.held_in_categories):
            _component(
                model_path(size, base_kind, "expert", category, replicate=replicate),
                expert_name(base_kind, category, replicate),
                finetune(
                    start,
                    suite.tasks_in(category),
                    spec.steps_for_expert(category),
                    100 + 10 * kind_index + index + REPLICATE_SEED_STEP * replicate,
                    f"{size} {base_kind} expert {category}{f' r{replicate}' if replicate else ''}",
                ),
                report,
                only,
            )
        if replicate:
            continue
        _component(
            model_path(size, base_kind, "multitask"),
            f"{base_kind}/multitask",
            finetune(
                start,
                suite.group("held_in"),
                spec.multitask_steps,
                200 + kind_index,
                f"{size} {base_kind} multitask",
            ),
            report,
            only,
        )
    return report


__all__ = [
    "BASE_KINDS",
    "INITS",
    "LADDER",
    "REPLICATES",
    "SIZES",
    "SizeSpec",
    "TaskSuite",
    "build",
    "model_path",
]

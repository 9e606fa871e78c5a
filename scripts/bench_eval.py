"""Examples/second of the batched evaluators vs a one-example-at-a-time loop on a small LlamaForCausalLM.

Rank classification (several answer choices per example) and greedy generation are each timed twice on
the same random model and seeded synthetic prompts: batched (`batch_size` rows per forward pass, length
sorted) and one example per call (its choices still share one forward pass). The issue's budget is a
ratio >= 10x. Rank classification is also timed with one (example, choice) row per forward pass, the naive
loop. All runs must give the same predictions; the script says so.

    python scripts/bench_eval.py                 # zoo "xs"-like model (hidden 64, 2 layers), CPU
    python scripts/bench_eval.py --hidden 128 --layers 4 --device cuda
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mergelab.eval import greedy_generate, rank_classification


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=512, help="classification examples (batched run)")
    parser.add_argument(
        "--loop-examples", type=int, default=128, help="examples timed in the one-at-a-time loop"
    )
    parser.add_argument("--choices", type=int, default=4, help="answer choices per example")
    parser.add_argument("--prompt-words", type=int, default=24, help="mean prompt length in words (= tokens)")
    parser.add_argument("--gen-examples", type=int, default=256, help="generation prompts (batched run)")
    parser.add_argument("--gen-loop-examples", type=int, default=64, help="generation prompts in the loop")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="rows per forward pass when batched")
    parser.add_argument("--vocab", type=int, default=1000, help="word-level vocabulary size")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: the shared CPU oversubscribes)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {token: index for index, token in enumerate(specials + [f"w{i}" for i in range(vocab_size)])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def build_model(args: argparse.Namespace, tokenizer, device: torch.device) -> LlamaForCausalLM:
    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).to(device).eval()


def words(rng: random.Random, vocab: int, count: int) -> str:
    return " ".join(f"w{rng.randrange(vocab)}" for _ in range(count))


def timed(function) -> tuple[list, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def report(
    name: str, count_batched: int, batched_s: float, count_loop: int, loop_s: float, same: bool
) -> float:
    batched_rate, loop_rate = count_batched / batched_s, count_loop / loop_s
    ratio = batched_rate / loop_rate
    print(
        f"{name:<20} batched {batched_rate:9.1f} ex/s ({count_batched} in {batched_s:.2f} s)   "
        f"one-at-a-time {loop_rate:8.1f} ex/s ({count_loop} in {loop_s:.2f} s)   "
        f"ratio {ratio:6.1f}x   same predictions: {same}"
    )
    return ratio


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    rng = random.Random(args.seed)
    tokenizer = build_tokenizer(args.vocab)
    model = build_model(args, tokenizer, device)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {parameters / 1e6:.2f}M parameters, device {device}, {args.threads} CPU threads")

    def prompt() -> str:
        return words(rng, args.vocab, max(1, args.prompt_words + rng.randint(-8, 8))) + " w0"

    prompts = [prompt() for _ in range(args.examples)]
    choices = [
        [" " + words(rng, args.vocab, rng.randint(1, 3)) for _ in range(args.choices)] for _ in prompts
    ]
    loop = range(min(args.loop_examples, len(prompts)))
    options = {"device": device, "progress": False}
    rank_classification(model, tokenizer, prompts[:8], choices[:8], **options)  # warm-up
    batched, batched_s = timed(
        lambda: rank_classification(model, tokenizer, prompts, choices, batch_size=args.batch_size, **options)
    )

    def one_at_a_time(rows_per_pass: int) -> tuple[list[int], float]:
        return timed(
            lambda: [
                rank_classification(
                    model, tokenizer, [prompts[i]], [choices[i]], batch_size=rows_per_pass, **options
                )[0]
                for i in loop
            ]
        )

    per_example, per_example_s = one_at_a_time(args.choices)
    per_row, per_row_s = one_at_a_time(1)
    expected = batched[: len(loop)]
    rank_ratio = report(
        "rank, loop/example", len(prompts), batched_s, len(loop), per_example_s, expected == per_example
    )
    row_ratio = report(
        "rank, loop/choice", len(prompts), batched_s, len(loop), per_row_s, expected == per_row
    )

    gen_prompts = [prompt() for _ in range(args.gen_examples)]
    gen_loop = range(min(args.gen_loop_examples, len(gen_prompts)))
    generate = {"max_new_tokens": args.max_new_tokens, **options}
    greedy_generate(model, tokenizer, gen_prompts[:4], **generate)  # warm-up
    batched, batched_s = timed(
        lambda: greedy_generate(model, tokenizer, gen_prompts, batch_size=args.batch_size, **generate)
    )
    single, single_s = timed(
        lambda: [
            greedy_generate(model, tokenizer, [gen_prompts[i]], batch_size=1, **generate)[0] for i in gen_loop
        ]
    )
    gen_ratio = report(
        "greedy generation",
        len(gen_prompts),
        batched_s,
        len(gen_loop),
        single_s,
        batched[: len(gen_loop)] == single,
    )
    verdict = "meets" if min(rank_ratio, gen_ratio) >= 10 else "MISSES"
    print(
        f"summary: batched / one example per call: {rank_ratio:.1f}x rank ({row_ratio:.1f}x vs one choice per "
        f"call), {gen_ratio:.1f}x generation; {verdict} the 10x budget"
    )


if __name__ == "__main__":
    main()

"""`tokenizer_source` (base | expert:<i> | union) and `chat_template` (base | expert:<i>) on real Llama
checkpoints whose experts extended the base's tokenizer (`PreTrainedTokenizerFast`, resized embeddings)."""

from __future__ import annotations

import copy
import filecmp
import json

import pytest
import torch

from mergelab.api.merging import merge
from mergelab.cli import main as cli
from mergelab.engine.checkpoint import CheckpointError
from mergelab.methods import MergeConfigError
from tests.conftest import fine_tune_like, state_dicts, tiny_llama

BASE_WORDS = ["<unk>", "<s>", "</s>", *(f"w{index}" for index in range(87))]  # 90 tokens
TEMPLATE = "{% for message in messages %}[{{ message['role'] }}] {{ message['content'] }}\n{% endfor %}"
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(
        models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def expert_with_tokens(base_model, root, name, seed, added, special=(), template=None):
    """An expert fine-tuned from the base whose tokenizer adds `added` tokens (rows resized and trained)."""
    tokenizer = word_tokenizer(BASE_WORDS)
    tokenizer.add_tokens(list(special), special_tokens=True)
    tokenizer.add_tokens(list(added))
    if template is not None:
        tokenizer.chat_template = template
    model = fine_tune_like(copy.deepcopy(base_model), seed=seed)  # resizing must not touch the base's config
    model.resize_token_embeddings(len(tokenizer))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            tensor[len(BASE_WORDS) :] = torch.randn(tensor[len(BASE_WORDS) :].shape, generator=generator)
    model.save_pretrained(root / name)
    tokenizer.save_pretrained(root / name)
    return root / name


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    """A base (90 tokens), expert 0 adding the special <tool> and zeta (with a chat template), expert 1
    adding zeta and omega."""
    root = tmp_path_factory.mktemp("vocabulary")
    base_model = tiny_llama(vocab_size=len(BASE_WORDS))
    base_model.save_pretrained(root / "base")
    word_tokenizer(BASE_WORDS).save_pretrained(root / "base")
    first = expert_with_tokens(base_model, root, "first", 1, ["zeta"], special=["<tool>"], template=TEMPLATE)
    second = expert_with_tokens(base_model, root, "second", 2, ["zeta", "omega"])
    return {"root": root, "base": root / "base", "experts": [first, second]}


def expected_rows(target_tokens, checkpoints, vocabularies, scale=1.0):
    """Task arithmetic row by row over the target vocabulary, written out independently of the engine: a row
    the base lacks is the base's mean row; a row an expert lacks is the (filled) base row."""
    base, *experts = checkpoints
    base_vocab, *expert_vocabs = vocabularies
    merged = {}
    for name in VOCAB_TENSORS:
        mean = base[name].mean(dim=0)
        rows = []
        for token in target_tokens:
            theta = base[name][base_vocab[token]] if token in base_vocab else mean
            delta = sum(
                (expert[name][vocab[token]] - theta if token in vocab else torch.zeros_like(theta))
                for expert, vocab in zip(experts, expert_vocabs)
            )
            rows.append(theta + scale * delta)
        merged[name] = torch.stack(rows)
    return merged


def vocab_of(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).get_vocab()


def test_union_vocabulary_merges_rows_by_token(extended, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "union"
    merge(
        extended["base"],
        extended["experts"],
        "task_arithmetic",
        out,
        scale=1.0,
        tokenizer_source="union",
        device="cpu",
        progress=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    union = [*BASE_WORDS, "<tool>", "zeta", "omega"]  # base order, then expert 0's, then expert 1's new one
    assert [tokenizer.convert_ids_to_tokens(index) for index in range(len(tokenizer))] == union
    assert tokenizer.added_tokens_decoder[90].special and not tokenizer.added_tokens_decoder[91].special
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 93
    paths = [extended["base"], *extended["experts"]]
    checkpoints = state_dicts(paths)
    (written,) = state_dicts([out])
    expected = expected_rows(union, checkpoints, [vocab_of(path) for path in paths])
    for name in VOCAB_TENSORS:
        assert written[name].shape == (93, 32)
        assert torch.allclose(written[name], expected[name], atol=1e-6)
    # every other tensor merges as usual
    name = "model.layers.1.self_attn.q_proj.weight"
    theta = checkpoints[0][name]
    assert torch.allclose(written[name], theta + sum(c[name] - theta for c in checkpoints[1:]), atol=1e-6)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape == (93, 32)
    assert tokenizer.chat_template is None  # the union carries the base's chat template: none


def test_expert_tokenizer_source_takes_its_vocabulary_files_and_template(extended, tmp_path):
    out = tmp_path / "first"
    merge(
        extended["base"],
        extended["experts"],
        "task_arithmetic",
        out,
        tokenizer_source="expert:1",
        chat_template="expert:0",
        device="cpu",
        progress=False,
    )
    second = extended["experts"][1]
    for name in ("tokenizer.json",):
        assert filecmp.cmp(out / name, second / name, shallow=False)
    paths = [extended["base"], *extended["experts"]]
    target = sorted(vocab_of(second), key=vocab_of(second).get)
    (written,) = state_dicts([out])
    expected = expected_rows(target, state_dicts(paths), [vocab_of(path) for path in paths], scale=0.4)
    for name in VOCAB_TENSORS:
        assert torch.allclose(written[name], expected[name], atol=1e-6)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template == TEMPLATE


def test_chat_template_from_an_expert_onto_the_base_tokenizer(extended, tmp_path):
    from transformers import AutoTokenizer

    experts = [extended["experts"][0]]
    out = tmp_path / "chat"
    args = [
        f"base={extended['base']}",
        f"experts=[{experts[0]}]",
        f"out={out}",
        "progress=false",
        "device=cpu",
    ]
    # the default tokenizer source is the base: expert 0's two added rows would not fit, so use the union
    assert cli(["merge", "merge=ties", "tokenizer_source=union", "chat_template=expert:0", *args]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == TEMPLATE
    assert len(tokenizer) == 92
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "w1 w2"}], tokenize=False)
    assert rendered == "[user] w1 w2\n"


def test_default_tokenizer_source_still_refuses_a_different_vocabulary(extended, tmp_path):
    with pytest.raises(
        CheckpointError,
        match=r"'lm_head.weight': base \[90, 32\] vs expert \[92, 32\].*vocabulary size mismatch",
    ):
        merge(
            extended["base"], extended["experts"][:1], "average", tmp_path / "x", device="cpu", progress=False
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"tokenizer_source": "expert"},
            MergeConfigError,
            "tokenizer_source='expert' is not one of base | union | expert:<i>",
        ),
        (
            {"tokenizer_source": "expert:2"},
            MergeConfigError,
            "tokenizer_source=expert:2: there are 2 experts",
        ),
        (
            {"chat_template": "union"},
            MergeConfigError,
            "chat_template='union' is not one of base | expert:<i>",
        ),
        ({"chat_template": "expert:1"}, CheckpointError, "chat_template=expert:1: .* has no chat template"),
    ],
)
def test_bad_tokenizer_options_are_named_before_anything_is_written(
    extended, tmp_path, options, error, message
):
    with pytest.raises(error, match=message):
        merge(
            extended["base"],
            extended["experts"],
            "average",
            tmp_path / "x",
            tokenizer_source=options.pop("tokenizer_source", "union"),
            device="cpu",
            progress=False,
            **options,
        )
    assert not (tmp_path / "x").exists()


def test_union_over_padded_embeddings_puts_new_tokens_in_padding_rows(tmp_path):
    """Real checkpoints pad the embedding past the tokenizer (96 rows for 90 tokens): an expert that adds
    tokens without resizing keeps 96 rows, and the union's new tokens take the first padding rows."""
    base_model = tiny_llama(vocab_size=96)
    base_model.save_pretrained(tmp_path / "base")
    word_tokenizer(BASE_WORDS).save_pretrained(tmp_path / "base")
    expert = fine_tune_like(copy.deepcopy(base_model), seed=5)
    tokenizer = word_tokenizer(BASE_WORDS)
    tokenizer.add_tokens(["omega", "zeta"])  # ids 90, 91: inside the 96 rows, no resize
    expert.save_pretrained(tmp_path / "expert")
    tokenizer.save_pretrained(tmp_path / "expert")
    out = tmp_path / "out"
    merge(
        tmp_path / "base",
        [tmp_path / "expert"],
        "task_arithmetic",
        out,
        scale=0.5,
        tokenizer_source="union",
        device="cpu",
        progress=False,
    )
    base, expert_sd, written = state_dicts([tmp_path / "base", tmp_path / "expert", out])
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 96
    for name in VOCAB_TENSORS:
        mean = base[name].mean(dim=0)
        assert written[name].shape == (96, 32)
        # base + 0.5 (expert - base) row by row: tokens the base has and the padding rows 92..95 in place;
        # for omega and zeta, which the base lacks, its side is its mean row, not its padding rows 90, 91
        kept = list(range(90)) + list(range(92, 96))
        assert torch.allclose(written[name][kept], (base[name][kept] + expert_sd[name][kept]) / 2, atol=1e-6)
        assert torch.allclose(written[name][90:92], (mean + expert_sd[name][90:92]) / 2, atol=1e-6)


def test_mergelab_json_records_the_options_and_reproduces_the_merge(extended, tmp_path):
    options = {
        "tokenizer_source": "union",
        "chat_template": "expert:0",
        "out_dtype": "bfloat16",
        "dtype": "float64",
    }
    out = tmp_path / "first"
    merge(
        extended["base"], extended["experts"], "task_arithmetic", out, device="cpu", progress=False, **options
    )
    recorded = json.loads((out / "mergelab.json").read_text())["merge"]
    assert {key: recorded["options"][key] for key in options} == options
    again = tmp_path / "again"
    merge(
        recorded["base"],
        recorded["experts"],
        recorded["method"],
        again,
        progress=False,
        **recorded["options"],
        **recorded["hparams"],
    )
    for path in sorted(out.iterdir()):
        assert filecmp.cmp(path, again / path.name, shallow=False), path.name

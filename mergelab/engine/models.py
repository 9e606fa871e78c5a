"""Loading a checkpoint directory (or hub id) as a `transformers` model and tokenizer, for the code that
runs models: evaluation, statistics, PLeaS and the merged-model loader."""

from __future__ import annotations

from pathlib import Path

import torch


def load_tokenizer(path: str | Path):
    """The model's tokenizer, with a pad token (eos when the checkpoint has none) as the evaluators need."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_class(path: str | Path):
    """The `transformers` auto class for the checkpoint at `path`: seq2seq for an encoder-decoder (T5,
    Flan-T5), else causal LM; read from its config, so a hub id and a local directory load alike."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    encoder_decoder = getattr(AutoConfig.from_pretrained(path), "is_encoder_decoder", False)
    return AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM


def load_model(path: str | Path, device: torch.device):
    """The model at `path` on `device`, in eval mode (class chosen by `model_class`)."""
    return model_class(path).from_pretrained(path).to(device).eval()

"""Tiny randomly initialised models of every supported architecture, built from configs.

Used by the test-suite and by users who want to try an analysis without a download.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from steerscope.errors import SteerscopeError
from steerscope.models.archs import ARCHITECTURES, spec_for_model_type

# the architecture rows that have a tiny test config (one per supported family)
TINY_ARCHS = tuple(spec.name for spec in ARCHITECTURES if spec.tiny_config_class)


def tiny_config(name: str, *, n_layers: int = 4, vocab_size: int = 256):
    """A small config (d=64, 4 query heads, 2 KV heads) of the named architecture (its row's
    ``tiny_config_class`` and ``tiny_config_extra`` in :data:`~steerscope.models.archs.ARCHITECTURES`)."""
    import transformers

    spec = next((s for s in ARCHITECTURES if s.name == name and s.tiny_config_class), None)
    if spec is None:
        raise SteerscopeError(f"unknown tiny architecture '{name}'",
                              f"use one of {', '.join(TINY_ARCHS)}")
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return getattr(transformers, spec.tiny_config_class)(**spec.tiny_config_extra, **common)


def tiny_model(name: str, *, seed: int = 0, n_layers: int = 4, dtype=torch.float32):
    """A randomly initialised tiny causal LM in eval mode (deterministic for a seed).

    Weights are drawn with a larger spread than the HF default so that attention patterns and
    greedy tokens are not degenerate.
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(name, n_layers=n_layers), dtype=dtype)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for pname, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1] ** 0.5))
            elif "norm" in pname:
                base = 1.0 - spec_for_model_type(model.config.model_type).norm_offset
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer(*, pad: bool = True, chat_template: bool = True):
    """A character-level fast tokenizer (99 tokens) for the 256-token tiny models.

    Special tokens: ``<pad>`` 0 (only registered with ``pad=True``), ``<s>`` 1, ``</s>`` 2
    (EOS), ``<unk>`` 3. With ``chat_template`` it has a minimal chat template with a system
    role.
    """
    import string

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    chars = list(string.ascii_letters + string.digits + string.punctuation + " ")
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *chars])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    extra = {"pad_token": "<pad>"} if pad else {}
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", **extra)
    if chat_template:
        out.chat_template = TINY_CHAT_TEMPLATE
    return out


def save_tiny_chat_model(folder, name: str = "llama", *, seed: int = 0, n_layers: int = 4):
    """Save a tiny random model and :func:`tiny_tokenizer` into ``folder`` (loadable with
    ``steerscope.models.load_model``); returns the folder."""
    from pathlib import Path

    folder = Path(folder)
    tiny_model(name, seed=seed, n_layers=n_layers).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder

"""Tiny models with random weights, of real architectures, for tests of mechanics.

Each is a Hugging Face folder (config, safetensors, and the embedded model's tokenizer with its chat
template, so batches built from real prompts fit every variant), written once into the shared cache
(``$SCORE_CACHE_DIR/tiny``) and reused. They are for what does not depend on what a model knows:
gradient accumulation, rank sharding, head layouts, weight movement. Tests of behaviour (training
raises the rewarded completion, agreement with vLLM on real text) keep the real embedded model.

Variants: ``llama`` (the embedded model's architecture, tied head, 2 layers of width 128),
``llama-untied``, ``gemma2`` (soft-capped logits), ``cohere`` (a logit scale), ``granite`` (a logit
divisor), ``gpt2`` (a backbone named ``transformer``). The post-head constants are far from 1 and the
weights larger than a trained model's init, so a head that skipped them would be visibly wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

FORMAT = 1
_SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64)


def _config(variant: str, embedded: str):
    from transformers import AutoConfig, CohereConfig, Gemma2Config, GPT2Config, GraniteConfig

    base = AutoConfig.from_pretrained(embedded)
    vocab = dict(vocab_size=base.vocab_size, bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id,
                 pad_token_id=base.pad_token_id, max_position_embeddings=2048)
    if variant in ("llama", "llama-untied"):
        config = AutoConfig.from_pretrained(embedded, **_SHAPE)
        config.tie_word_embeddings = variant == "llama"
        return config
    if variant == "gemma2":
        return Gemma2Config(**vocab, **_SHAPE, final_logit_softcapping=2.0, attn_logit_softcapping=50.0, query_pre_attn_scalar=64,
                            sliding_window=64, tie_word_embeddings=True)
    if variant == "cohere":
        return CohereConfig(**vocab, **_SHAPE, logit_scale=4.0, tie_word_embeddings=True)
    if variant == "granite":
        return GraniteConfig(**vocab, **_SHAPE, logits_scaling=0.25, tie_word_embeddings=True)
    if variant == "gpt2":
        return GPT2Config(vocab_size=base.vocab_size, n_positions=2048, n_embd=128, n_layer=2, n_head=2, bos_token_id=base.bos_token_id,
                          eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id)
    raise ValueError(f"unknown tiny variant {variant!r}")


def tiny_model(variant: str, embedded: str, cache: Path | None = None) -> str:
    """The folder of one tiny variant (built on first use, seeded, so every machine builds the same weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = cache or Path(os.environ.get("SCORE_CACHE_DIR", Path.home() / ".cache" / "score-on-ray")) / "tiny"
    target = root / f"{variant}-v{FORMAT}"
    if (target / "tiny.json").is_file():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{variant}.", dir=root))
    try:
        torch.manual_seed(0)
        config = _config(variant, embedded)
        config.initializer_range = 0.2  # logits of a few units: softcaps and scales change the distribution
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.generation_config.do_sample = False
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(embedded).save_pretrained(tmp)
        (tmp / "tiny.json").write_text(json.dumps({"variant": variant, "format": FORMAT}))
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)

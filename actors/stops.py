"""Which tokens end a turn: what the chat template writes after an assistant message, and what vLLM stops at.

vLLM stops a completion at the tokenizer's end-of-sequence token and at every ``eos_token_id`` of the
model's ``generation_config.json``. A template that closes an assistant turn with a token outside that set
(a Llama-3 ``<|eot_id|>`` with only ``<|end_of_text|>`` as eos, say) lets attempt 1 run past its turn
into text the learner then trains on: such a model is refused before training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_MARK = "\x00SCORE-END-OF-TURN\x00"


def stop_token_ids(tokenizer: Any, model_path: str | None = None) -> set[int]:
    """The ids vLLM stops at: the tokenizer's eos and ``generation_config.json``'s ``eos_token_id`` (int or list)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if model_path is not None and (Path(model_path) / "generation_config.json").is_file():  # a hub name: the tokenizer's eos
        from transformers import GenerationConfig  # heavy: only where a model folder is read

        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        ids |= set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return ids


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The first token the chat template writes after an assistant message's content (None: it writes nothing)."""
    convo = [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": _MARK}]
    text = tokenizer.apply_chat_template(convo, tokenize=False)
    tail = text.partition(_MARK)[2]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail.strip() else []
    return ids[0] if ids else None

"""Token-exact prompts for both attempts, following the model's chat template.

Attempt 2's prompt is built from token ids, not re-tokenised text: ``x1 + y1 + suffix``, where
``y1`` are the exact tokens sampled for attempt 1 (without a trailing end-of-turn token) and
``suffix`` is what the chat template puts after an assistant message and around the next user
turn (end of turn, the self-correction instruction, the generation prompt). Every later attempt
is built the same way from the one before it: ``x_t = x_{t-1} + y_{t-1} + suffix``, so the last
attempt's sequence holds the whole conversation (training and evaluation share this). The learner can
therefore rebuild every token and mask from the batch, and what the model was conditioned on is
exactly what it produced.
"""

from __future__ import annotations

from typing import Any

from actors.stops import end_of_turn_id, stop_token_ids

_SENTINEL = "\x00SCORE-ATTEMPT-1\x00"


class ChatFormatter:
    """Owns a tokenizer and the chat-template pieces needed to build attempt prompts."""

    def __init__(self, tokenizer: Any, stop_ids: set[int] | None = None):
        """``stop_ids``: the ids generation stops at (:func:`actors.stops.stop_token_ids`; default the tokenizer's
        eos); the token the template closes a turn with is added to them."""
        self.tokenizer = tokenizer
        self.end_of_turn_ids = set(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer)
        eot = end_of_turn_id(tokenizer)
        if eot is not None:
            self.end_of_turn_ids.add(eot)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def first_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode(self.render(messages))

    def second_turn_suffix(self, first_messages: list[dict[str, str]], instruction: str) -> str:
        """The template text between the end of attempt 1's content and attempt 2's generation."""
        full = self.render(
            [*first_messages, {"role": "assistant", "content": _SENTINEL}, {"role": "user", "content": instruction}]
        )
        prefix, sep, suffix = full.partition(_SENTINEL)
        if not sep or prefix != self.render(first_messages):
            raise ValueError(
                "the chat template does not render the attempt-1 prompt as a prefix of the attempt-2 "
                "conversation; token-exact second attempts need a template that appends turns"
            )
        return suffix

    def second_prompt_ids(
        self, x1_ids: list[int], y1_ids: list[int], first_messages: list[dict[str, str]], instruction: str
    ) -> list[int]:
        body = list(y1_ids)
        while body and body[-1] in self.end_of_turn_ids:  # the suffix closes the turn itself
            body.pop()
        return list(x1_ids) + body + self.encode(self.second_turn_suffix(first_messages, instruction))

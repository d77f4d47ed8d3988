"""The module DeepSpeed wraps: a causal LM whose ``forward`` returns the log-probs of the target tokens.

As OpenRLHF's ``Actor``: the learner never calls pieces of the Hugging Face model around the engine.
Every pass of the policy is ``engine(...)``, so DeepSpeed sees each forward (ZeRO-3 counts its
micro-steps in ``engine.forward``: while that count stays 0 its gradient partitioning overwrites the
accumulated gradient instead of adding to it, and its parameter coordinator, which drives prefetch,
is reset there too).

Invariants:

- The log-prob of target ``t`` at position ``i`` is ``log_softmax(g(head(h_i)) / T)[t]``, where ``h``
  is the backbone's last hidden state, ``head`` the model's own output embedding and ``g`` the
  post-head transform its ``ForCausalLM.forward`` applies (:func:`post_head_transform`: Gemma-2's
  ``final_logit_softcapping``, Cohere's ``logit_scale``, Granite's ``logits_scaling``, ...): the
  distribution vLLM samples from, at the sampling temperature ``T``.
- The vocabulary projection runs only at the kept positions (the action tokens), never at the
  prompt, the instruction or the padding; other positions are 0. Past ``chunk_positions`` kept
  positions it runs a chunk at a time (:class:`ChunkedHeadLogprobs`), inside one call of the head
  module, so that every rank makes the same ZeRO-3 gathers whatever its number of tokens.
- :func:`check_head` compares the result with ``model(...).logits`` on a few tokens; a model whose
  head does something this module does not reproduce is refused in one line (:class:`HeadError`)
  instead of being trained on another distribution than the one it samples.
"""

from __future__ import annotations

from typing import Callable

import torch


class HeadError(ValueError):
    """The learner cannot reproduce this model's output distribution; ``str(err)`` is one line."""


def _softcap(cap: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda logits: torch.tanh(logits / cap) * cap


def post_head_transform(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the model's ``ForCausalLM.forward`` does to ``lm_head``'s output, from its config (None: nothing).

    transformers 5.19: ``final_logit_softcapping`` (Gemma-2/3, VaultGemma, nanochat), ``logits_soft_cap``
    (RecurrentGemma), ``logit_scale`` (Cohere, a model attribute), ``logits_scaling`` (Granite; MiniCPM3
    divides the hidden state before a bias-free head, the same), ``lm_head_multiplier`` (Falcon-H1).
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    for name, make in (("logit_scale", lambda s: (lambda x: x * s)), ("lm_head_multiplier", lambda s: (lambda x: x * s)),
                       ("logits_scaling", lambda s: (lambda x: x / s))):
        value = getattr(model, name, None) if name == "logit_scale" else getattr(config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value != 1:
            steps.append(make(float(value)))
    for name in ("final_logit_softcapping", "logits_soft_cap"):
        cap = getattr(config, name, None)
        if cap:
            steps.append(_softcap(float(cap)))
    if not steps:
        return None

    def transform(logits: torch.Tensor) -> torch.Tensor:
        for step in steps:
            logits = step(logits)
        return logits

    return transform


class PolicyLogprobs(torch.nn.Module):
    """Owns a Hugging Face causal LM (``.model``, whose parameter names are the weights' names) and
    turns a batch into per-target log-probs: the module the DeepSpeed engine wraps, and the reference."""

    def __init__(self, model: torch.nn.Module, chunk_positions: int | None = None):
        """``chunk_positions``: score the kept positions that many at a time (None: all at once; :class:`ChunkedHeadLogprobs`). Each
        chunk's ``[chunk, vocab]`` logits are recomputed in the backward pass instead of kept, so the head's
        transient memory is one chunk's, not ``positions x vocab`` fp32 (10 GB for 16k positions of a 152k
        vocabulary), for one more head matrix product per chunk."""
        super().__init__()
        self.model = model
        self.chunk_positions = chunk_positions
        if model.get_output_embeddings() is None:
            raise HeadError(f"{type(model).__name__} has no output embedding (LM head): the learner needs a causal LM")
        if model.base_model is model:
            raise HeadError(f"{type(model).__name__} has no backbone under '{model.base_model_prefix}': the learner needs a "
                            "Hugging Face *ForCausalLM model")
        self._transform = post_head_transform(model)

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor,
                keep: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """Log-probs ``[N, L-1]`` of ``targets`` (``input_ids[:, 1:]``) at the kept positions (``keep``, a
        ``[N, L-1]`` mask; default every real target), 0 elsewhere."""
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        sel = (attention_mask[:, 1:] > 0) if keep is None else keep.bool()
        kept, picked = hidden[:, :-1][sel], targets[sel]  # [M, H] and [M] for the M kept positions
        head = self.model.get_output_embeddings()
        chunk = self.chunk_positions
        if chunk and kept.shape[0] > chunk and isinstance(head, torch.nn.Linear):
            transform = self._transform
            logp = _call_as(head, lambda h: ChunkedHeadLogprobs.apply(h, head.weight, head.bias, picked, chunk, transform, temperature), kept)
        else:
            logp = head_logprobs(head(kept), picked, self._transform, temperature)
        return torch.zeros(sel.shape, dtype=logp.dtype, device=logp.device).masked_scatter(sel, logp)


def head_logprobs(logits: torch.Tensor, targets: torch.Tensor, transform, temperature: float) -> torch.Tensor:
    """``[m, V]`` head outputs -> ``[m]`` log-probs of ``targets``: the post-head transform and the temperature, in fp32."""
    logits = logits.float()
    if transform is not None:
        logits = transform(logits)
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _call_as(module: torch.nn.Module, forward, *args):
    """Call ``module`` with ``forward`` standing in for its own, its hooks included (ZeRO-3 gathers its weight before
    and reduces its gradient after): one call per pass on every rank, whatever the number of chunks."""
    module.forward = forward
    try:
        return module(*args)
    finally:
        del module.forward


class ChunkedHeadLogprobs(torch.autograd.Function):
    """``log_softmax(g(h W^T + b) / T)[t]`` for ``[M, H]`` hidden states, ``chunk`` positions at a time: neither pass
    holds more than one chunk's ``[chunk, V]`` logits (the backward recomputes each chunk's), for one more head
    matrix product per chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, transform, temperature):
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk, ctx.transform, ctx.temperature = chunk, transform, temperature
        return torch.cat([head_logprobs(torch.nn.functional.linear(hidden[i : i + chunk], weight, bias), targets[i : i + chunk],
                                         transform, temperature) for i in range(0, hidden.shape[0], chunk)])

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, targets = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if bias is not None and need_b else None
        w = weight.detach().requires_grad_(need_w)
        b = bias.detach().requires_grad_(bool(need_b)) if bias is not None else None
        for i in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[i : i + ctx.chunk].detach().requires_grad_(need_h)
            leaves = [x for x in (h, w, b) if x is not None and x.requires_grad]
            with torch.enable_grad():
                out = head_logprobs(torch.nn.functional.linear(h, w, b), targets[i : i + ctx.chunk], ctx.transform, ctx.temperature)
                got = dict(zip(map(id, leaves), torch.autograd.grad(out, leaves, grad[i : i + ctx.chunk])))
            if need_h:
                grad_hidden[i : i + ctx.chunk] = got[id(h)]
            if need_w:
                grad_weight += got[id(w)]
            if grad_bias is not None:
                grad_bias += got[id(b)]
        return (grad_hidden, grad_weight.to(weight.dtype) if need_w else None,
                grad_bias.to(bias.dtype) if grad_bias is not None else None, None, None, None, None)


def check_head(policy: PolicyLogprobs, device: torch.device, tolerance: float | None = None, length: int = 8) -> float:
    """Compare :class:`PolicyLogprobs` with ``log_softmax(model(...).logits)`` on ``length`` tokens (no grad;
    under ZeRO-3 every rank must call it). Returns the largest difference; raises :class:`HeadError` past
    ``tolerance`` (default: 1e-3 in float32, 0.25 in 16-bit formats, where two matrix products of the same
    numbers may round apart)."""
    dtype = next(policy.model.parameters()).dtype
    limit = tolerance if tolerance is not None else (1e-3 if dtype == torch.float32 else 0.25)
    vocab = policy.model.get_output_embeddings().weight.shape[0] if hasattr(policy.model.get_output_embeddings(), "weight") else policy.config.vocab_size
    ids = (torch.arange(length, device=device).unsqueeze(0) * 7919 + 11) % max(vocab - 1, 1)
    mask = torch.ones_like(ids)
    was_training = policy.training
    policy.eval()
    with torch.no_grad():
        ours = policy(input_ids=ids, attention_mask=mask, targets=ids[:, 1:])
        theirs = torch.log_softmax(policy.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float(), dim=-1)
        theirs = theirs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    policy.train(was_training)
    worst = float((ours - theirs).abs().max())
    if not worst <= limit:
        raise HeadError(
            f"{type(policy.model).__name__} ({policy.config.model_type}): the learner's log-probs differ from the model's own "
            f"logits by up to {worst:.3g} (allowed {limit:g}); its causal-LM head applies a transform the learner does not "
            "reproduce, so training would score another distribution than vLLM samples")
    return worst

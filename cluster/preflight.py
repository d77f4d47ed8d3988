"""Checks of a run against its model and task, in a second, before minutes of start-up.

Each failure is a :class:`cluster.config.ConfigError` (one line, exit 2 from the command line):

- the model has no chat template (both attempts are chat turns);
- the template closes an assistant turn with a token vLLM does not stop at (:mod:`actors.stops`);
- the longest prompt plus every attempt's ``max_tokens`` (and the self-correction turns between
  them) is longer than ``rollout.max_model_len``: in training (two attempts) and in the final
  evaluations (``eval.attempts``). vLLM would refuse or cut such a request in the middle of a run.
"""

from __future__ import annotations

import logging

from cluster.config import ConfigError, ScoreConfig

log = logging.getLogger(__name__)


def check_run(cfg: ScoreConfig, model_path: str, task) -> dict[str, int]:
    """Raise :class:`ConfigError` for a run that cannot work; returns the lengths it checked (tokens)."""
    from transformers import AutoTokenizer  # heavy: once per run

    from actors.prompts import ChatFormatter
    from actors.stops import end_of_turn_id, stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not tokenizer.chat_template:
        raise ConfigError(f"model {model_path} has no chat template: SCoRe's attempts are chat turns; use an instruct model "
                          "or add a chat_template to its tokenizer_config.json")
    eot, stops = end_of_turn_id(tokenizer), stop_token_ids(tokenizer, model_path)
    if eot is not None and eot not in stops:
        raise ConfigError(f"the chat template of {model_path} ends a turn with {tokenizer.convert_ids_to_tokens(eot)!r} (id {eot}), which vLLM "
                          f"does not stop at (stop ids {sorted(stops)}): add it to eos_token_id in generation_config.json")
    fmt = ChatFormatter(tokenizer, stops)
    problems = [p for split in ("train", "val", "eval") for p in task.problems(split)]
    longest = sorted(problems, key=lambda p: -len(p.question))[:32]  # the longest texts, tokenised (cheap)
    prompt = max(len(fmt.first_prompt_ids(task.first_turn(p))) for p in longest)
    turn = len(fmt.encode(fmt.second_turn_suffix(task.first_turn(longest[0]), task.instruction)))
    r, e, n = cfg.rollout, cfg.eval, cfg.algorithm.attempts
    lengths = {"prompt": prompt, "correction_turn": turn,
               "train": prompt + r.attempt1.max_tokens + (n - 1) * (turn + r.attempt2.max_tokens),
               "eval": prompt + e.attempts * e.max_tokens + (e.attempts - 1) * turn}
    for what, need, how in (("training", lengths["train"], "rollout.attempt1.max_tokens + (algorithm.attempts - 1) x rollout.attempt2.max_tokens"),
                            (f"the {e.attempts}-attempt evaluation", lengths["eval"], "eval.attempts x eval.max_tokens")):
        if need > r.max_model_len:
            raise ConfigError(f"{what} needs sequences of up to {need} tokens (longest prompt {prompt} + {how} + {turn} per "
                              f"self-correction turn), more than rollout.max_model_len={r.max_model_len}: raise it or lower the max_tokens")
    return lengths

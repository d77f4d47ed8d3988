"""Generation: vLLM engines as Ray actors, the two-attempt rollout, receiving new weights."""

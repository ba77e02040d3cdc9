"""The run configuration: a YAML file, validated by pydantic, overridable from the CLI.

Every key is checked: an unknown key or a value of the wrong type is rejected with the
key's dotted path, so a typo never silently falls back to a default. ``--set
KEY=VALUE`` overrides any key, the value read as YAML (``--set
stages.language.allowed=[en,de]``, ``--set stages.quality.enabled=false``).

A ``--set stages.<stage>...`` is the user's word on that stage for the whole run, so it
wins over a dataset's own ``stages:`` block too (which is otherwise merged over the
top-level one): it is set in every dataset block that has that stage. One dataset's
setting still goes through ``--set datasets.<N>.stages...``, given after it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from pipeline.errors import PipelineError
from pipeline.executors import ExecutorConfig
from pipeline.inputs import DatasetConfig
from pipeline.settings import StrictModel
from pipeline.stages import registry
from pipeline.stages.registry import StagesConfig

DEFAULT_CONFIG_FILE = "pipeline.yaml"


class FinetuneConfig(StrictModel):
    """The ``finetune`` section: train on each version a run publishes (off by default).

    Chaining is for scheduled runs, where fresh data should end in a fresh adapter
    without a person in between. It trains only when a version is *published*: a run
    whose inputs and config match an existing version trains nothing. Training is not
    part of a version, so this section is in no fingerprint.
    """

    enabled: bool = False
    datasets: list[str] | None = None
    """The datasets to train on; None: every one of a kind that trains
    (classification, instruction)."""
    runs: str | None = None
    """Where run folders go; None: ``runs/`` in the output folder."""
    settings: dict[str, Any] = Field(default_factory=dict)
    """Training keys, as ``python -m pipeline train --set`` takes them (README, Fine-tuning)."""

    @model_validator(mode="after")
    def _check_settings(self) -> FinetuneConfig:
        from pipeline.train.config import TrainConfig  # stdlib only: no torch import here

        try:
            TrainConfig.from_dict(self.settings)
        except PipelineError as err:
            raise ValueError(f"settings: {err}") from None
        return self

    def trains(self, dataset: str, kind: str) -> bool:
        """Whether a new version of ``dataset`` (of ``kind``) is to be trained on."""
        if not self.enabled:
            return False
        from pipeline.train.manifest import TRAINABLE_KINDS

        return dataset in self.datasets if self.datasets is not None else kind in TRAINABLE_KINDS


class PipelineConfig(StrictModel):
    datasets: list[DatasetConfig] = Field(min_length=1)
    output: str = "out"
    shard_rows: int = Field(default=50_000, gt=0)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    """One key per registered stage: the field's model is made by the stage registry
    (:func:`_use_registered_stages`)."""
    executor: ExecutorConfig = ExecutorConfig()
    """Where the tasks run (``pipeline.executors``); not part of any version's fingerprint."""
    finetune: FinetuneConfig = FinetuneConfig()

    @model_validator(mode="after")
    def _check_dataset_stages(self) -> PipelineConfig:
        for i, dataset in enumerate(self.datasets):
            try:
                self.stages_for(dataset)
            except ValidationError as err:
                e = err.errors()[0]
                path = ".".join(str(p) for p in e["loc"])
                msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
                raise ValueError(f"datasets.{i}.stages.{path}: {msg}") from None
        names = {d.name for d in self.datasets}
        unknown = sorted(set(self.finetune.datasets or []) - names)
        if unknown:
            raise ValueError(f"finetune.datasets: {unknown[0]!r} is not a dataset of this config")
        return self

    def stages_for(self, dataset: DatasetConfig) -> StagesConfig:
        """The stage settings of ``dataset``: the top-level ``stages`` with the
        dataset's own ``stages`` entries merged over them, key by key."""
        if not dataset.stages:
            return self.stages
        return registry.stages_model().model_validate(_merge(self.stages.model_dump(mode="json"), dataset.stages))

    def dataset(self, name: str) -> DatasetConfig:
        """The dataset called ``name``."""
        for dataset in self.datasets:
            if dataset.name == name:
                return dataset
        raise PipelineError(f"no dataset {name!r} in the config (its datasets: {', '.join(d.name for d in self.datasets)})")

    def fingerprint_payload(self, dataset: DatasetConfig) -> dict[str, Any]:
        """What decides a dataset's content: its columns and the stage settings.

        Input paths and the output folder are left out (the input *contents* are
        hashed separately), so moving the files does not make a new version.
        """
        return {
            "columns": dataset.columns.model_dump(mode="json"),
            "format": dataset.format,
            "stages": self.stages_for(dataset).model_dump(mode="json"),
        }


def _use_registered_stages() -> None:
    """Point ``PipelineConfig.stages`` at the model of the stages registered now.

    Called at import and again whenever :func:`pipeline.stages.registry.register` adds
    a stage, so that its section validates like any other.
    """
    model = registry.stages_model()
    PipelineConfig.model_fields["stages"] = FieldInfo(annotation=model, default_factory=model)
    PipelineConfig.model_rebuild(force=True)


_use_registered_stages()
registry.on_change(_use_registered_stages)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def _format_errors(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{path}: {msg}")
    return f"invalid config {source}: " + "; ".join(parts)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.0.c=VALUE`` -> (["a", "b", "0", "c"], VALUE read as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise PipelineError(f"--set {item!r}: expected KEY=VALUE, e.g. stages.language.allowed=[en,de]")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise PipelineError(f"--set {key}: value {raw!r} is not valid YAML ({exc.problem})") from exc
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``value`` at ``path`` in nested dicts/lists, creating dicts on the way."""
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise PipelineError(f"--set {'.'.join(path)}: {'.'.join(path[:i + 1])} is not an index of the list")
            node = node[int(part)]
            continue
        if not isinstance(node.get(part, {}), (dict, list)):
            raise PipelineError(f"--set {'.'.join(path)}: {'.'.join(path[:i + 1])} is not a section")
        node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise PipelineError(f"--set {'.'.join(path)}: {last} is not an index of the list")
        node[int(last)] = value
    else:
        node[last] = value


def load_config(
    path: str | Path | None = None,
    inputs: list[str] | None = None,
    output: str | None = None,
    overrides: list[str] = (),
) -> PipelineConfig:
    """Read, merge and validate the configuration.

    ``path`` defaults to ``pipeline.yaml`` in the working directory when it exists.
    Paths in a config file (inputs, output, ``rehearsal.inputs``, ``finetune.runs``)
    are relative to that file (:func:`_resolve_paths`). ``inputs``
    (from ``--input``) replace the file's datasets with one dataset named after the
    first input, keeping the file's first dataset's column mapping.
    """
    data: dict[str, Any] = {}
    source = "(defaults)"
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file() and not inputs:
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise PipelineError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise PipelineError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
        if not isinstance(data, dict):
            raise PipelineError(f"config file {path}: expected a mapping of keys at the top level")
        _resolve_paths(data, path.parent)
    if inputs:
        first = (data.get("datasets") or [{}])[0]
        columns = first.get("columns", {}) if isinstance(first, dict) else {}
        name = _name_from_path(inputs[0])
        data["datasets"] = [{"name": name, "inputs": list(inputs), "columns": columns}]
    if output is not None:
        data["output"] = output
    for item in overrides:
        key, value = parse_override(item)
        apply_override(data, key, value)
        for index in _datasets_with_own(data, key):
            apply_override(data, ["datasets", str(index), *key], copy.deepcopy(value))
    if not data.get("datasets"):
        raise PipelineError(
            f"no datasets to curate: pass --input PATH, or --config FILE, or create {DEFAULT_CONFIG_FILE} here"
        )
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise PipelineError(_format_errors(err, source)) from err


def _datasets_with_own(data: dict[str, Any], key: list[str]) -> list[int]:
    """Indices of the datasets whose own ``stages`` block sets what ``key`` (a
    ``stages...`` override) sets, and would win over it unless it is set there too."""
    if key[0] != "stages" or not isinstance(data.get("datasets"), list):
        return []
    found = []
    for index, dataset in enumerate(data["datasets"]):
        own = dataset.get("stages") if isinstance(dataset, dict) else None
        if isinstance(own, dict) and (len(key) == 1 or isinstance(own.get(key[1]), dict)):
            found.append(index)
    return found


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make the file's relative paths relative to ``base`` (the file's folder): the
    datasets' inputs, the output, the general data of ``rehearsal`` and the evaluation
    sets of ``decontaminate`` (top-level and per dataset) and the fine-tuning runs folder."""

    def resolve(value: Any) -> Any:
        return str(base / value) if isinstance(value, str) else value

    def resolve_stage_inputs(stages: Any) -> None:
        rehearsal = stages.get("rehearsal") if isinstance(stages, dict) else None
        if isinstance(rehearsal, dict) and isinstance(rehearsal.get("inputs"), list):
            rehearsal["inputs"] = [resolve(p) for p in rehearsal["inputs"]]
        decontaminate = stages.get("decontaminate") if isinstance(stages, dict) else None
        eval_sets = decontaminate.get("eval_sets") if isinstance(decontaminate, dict) else None
        for eval_set in eval_sets if isinstance(eval_sets, list) else []:
            if isinstance(eval_set, dict) and isinstance(eval_set.get("inputs"), list):
                eval_set["inputs"] = [resolve(p) for p in eval_set["inputs"]]

    for ds in data.get("datasets") or []:
        if isinstance(ds, dict):
            if isinstance(ds.get("inputs"), list):
                ds["inputs"] = [resolve(p) for p in ds["inputs"]]
            resolve_stage_inputs(ds.get("stages"))
    resolve_stage_inputs(data.get("stages"))
    if isinstance(data.get("output"), str):
        data["output"] = resolve(data["output"])
    finetune = data.get("finetune")
    if isinstance(finetune, dict) and isinstance(finetune.get("runs"), str):
        finetune["runs"] = resolve(finetune["runs"])


def _name_from_path(path: str) -> str:
    """A dataset name from an input path: ``data/reviews*.jsonl`` -> ``reviews``."""
    stem = Path(path.rstrip("/")).name.split(".")[0]
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem).strip("_-")
    return cleaned or "dataset"

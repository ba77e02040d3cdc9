"""What decides a version's content, hashed: the fingerprint, the work key, step keys.

The same inputs and config give the same fingerprint, so a re-run finds the version it
would publish and publishes nothing. The work key names the run's work folder by what
decides the ingested shards alone, and each stage's step key chains from the key of the
stage before it, so a changed setting re-runs that stage and those after it, never
those before. These are plain functions of the config and the files, with no Prefect
in them, so the flow and the tests compute the same keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pipeline
from pipeline.config import PipelineConfig
from pipeline.files import file_sha256
from pipeline.readers import expand_inputs
from pipeline.stages import registry
from pipeline.stages.base import Read, StageContext
from pipeline.store import Store


def config_hash(payload: dict[str, Any]) -> str:
    """sha256 of ``payload`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class HashedRead:
    """A file a stage reads (:meth:`pipeline.stages.base.Stage.reads`), with its sha256."""

    read: Read
    sha256: str

    def manifest_entry(self) -> dict[str, Any]:
        """How the manifest lists it: among the inputs (data), or under its role."""
        if self.read.data:
            return {"path": str(self.read.path), "label": self.read.label, "sha256": self.sha256, "role": self.read.role}
        return {"file": str(self.read.path), "sha256": self.sha256, **self.read.detail}


@dataclass(frozen=True)
class Fingerprint:
    """What decides a version's content, hashed into ``value``."""

    value: str
    inputs: list[dict[str, Any]]
    """The input files with their hashes: the dataset's, then the data files stages read."""
    payload: dict[str, Any]
    config_hash: str
    work_key: str
    """What decides the ingested shards, hashed: names the run's work folder."""
    reads: dict[str, list[HashedRead]] = field(default_factory=dict)
    """Per stage, the files it reads besides its shards."""

    def records(self) -> dict[str, dict[str, Any]]:
        """The manifest entries of the files read that are not data, by role (e.g. the
        review decisions the run honoured)."""
        return {h.read.role: h.manifest_entry() for hs in self.reads.values() for h in hs if not h.read.data}

    def stage_settings(self, stage: str, settings: dict[str, Any]) -> dict[str, Any]:
        """``settings`` of ``stage`` with the paths of the files it reads filled in
        where the stage asked for them (:attr:`Read.setting`)."""
        given = {h.read.setting: str(h.read.path) for h in self.reads.get(stage, []) if h.read.setting}
        return {**settings, **given}

    def step_key(self, previous: str, stage: str, settings: dict[str, Any]) -> str:
        """The step key of ``stage``: see :func:`step_key`."""
        return step_key(previous, stage, settings, [h.sha256 for h in self.reads.get(stage, [])])


def step_key(previous: str, stage: str, settings: dict[str, Any], reads: list[str]) -> str:
    """What decides a stage's outputs, hashed: the key of the step before it, the
    stage's settings, and the sha256 of the files it reads besides its shards."""
    return config_hash({"after": previous, "stage": stage, "config": settings, "reads": reads})


def run_fingerprint(cfg: PipelineConfig, dataset_name: str) -> Fingerprint:
    """Hash what decides the version's content: input bytes and names, the files the
    enabled stages read, the config and the code version."""
    ds = cfg.dataset(dataset_name)
    inputs = [
        {"path": str(f.path), "label": f.label, "sha256": file_sha256(f.path), "role": "dataset"}
        for f in expand_inputs(ds)
    ]
    stages = cfg.stages_for(ds)
    context = StageContext(ds, Store(cfg.output, ds.name))
    reads: dict[str, list[HashedRead]] = {}
    for cls in registry.stages():
        settings = getattr(stages, cls.name)
        if settings.enabled:
            hashed = [HashedRead(r, file_sha256(r.path)) for r in cls.reads(settings, context)]
            if hashed:
                reads[cls.name] = hashed
    every_read = [h for hs in reads.values() for h in hs]
    inputs += [h.manifest_entry() for h in every_read if h.read.data]
    payload = cfg.fingerprint_payload(ds)
    chash = config_hash(payload)
    value = config_hash(
        {
            "pipeline": pipeline.__version__,
            "inputs": [(i["role"], i["label"], i["sha256"]) for i in inputs],
            "config": chash,
            "shard_rows": cfg.shard_rows,
            # The other files read (review decisions). The key keeps the name it was
            # first given, so that versions published before still match.
            "review": ",".join(h.sha256 for h in every_read if not h.read.data) or None,
        }
    )
    work_key = config_hash(
        {
            "pipeline": pipeline.__version__,
            "inputs": [(i["label"], i["sha256"]) for i in inputs if i["role"] == "dataset"],
            "columns": payload["columns"],
            "format": payload["format"],
            "shard_rows": cfg.shard_rows,
        }
    )
    return Fingerprint(value, inputs, payload, chash, work_key, reads)

"""The ``curate`` flow: inputs -> stages -> a published version, as Prefect tasks.

One task per stage step and shard, passing shard paths (see ``pipeline.steps``); a
per-shard task does its step where ``pipeline.executors`` sends it (here, or on a
Dask worker), so the same flow runs in-process or scaled out. Task results are
persisted under the run's work folder and cached by their inputs and source (never
by run id), so a run that was killed resumes: the re-run finds the finished steps
cached and does only the rest.

The work folder is named by what decides the ingested shards (input contents, column
mapping, shard size), and each stage writes to a sub-folder named by its step key, its
settings chained to those of the stages before it (``pipeline.fingerprint``). So a
changed input never reuses a stale result, and a run with other settings for one stage
takes the stages before it from the cache and re-runs that stage and those after it.
The flow knows no stage by name: it runs what ``pipeline.stages.registry`` lists. The folder is removed once the
version is published. Runs of the same inputs share it, so they take turns under
``Store.work_lock``: the second waits, then finds the version the first published, or
resumes from its cache.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.futures import PrefectFuture, as_completed

from pipeline import executors, progress, steps
from pipeline.card import format_reasons
from pipeline.config import PipelineConfig
from pipeline.fingerprint import Fingerprint, run_fingerprint
from pipeline.inputs import DatasetConfig
from pipeline.stages import registry
from pipeline.steps import Applied, Decided, Ingested, Shard
from pipeline.store import Store
from pipeline.version import RunRecord, StageReport, publish

_CACHED = {"cache_policy": INPUTS + TASK_SOURCE, "persist_result": True}


@task(name="ingest", **_CACHED)
def ingest_task(dataset: dict[str, Any], shard_rows: int, work_dir: str) -> Ingested:
    return steps.ingest(dataset, shard_rows, work_dir)


@task(name="summarize", task_run_name="{name}-summarize-{shard.name}", **_CACHED)
def summarize_task(name: str, config: dict[str, Any], ingested: Ingested, shard: Shard, out_dir: str) -> str:
    return executors.run(steps.summarize, name, config, ingested, shard, out_dir)


@task(name="decide", task_run_name="{name}-decide", **_CACHED)
def decide_task(name: str, config: dict[str, Any], ingested: Ingested, summaries: list[str], out_dir: str) -> Decided:
    return steps.decide(name, config, ingested, summaries, out_dir)


@task(name="apply", task_run_name="{name}-{shard.name}", **_CACHED)
def apply_task(
    name: str, config: dict[str, Any], ingested: Ingested, shard: Shard, state: str | None, out_dir: str
) -> Applied:
    return executors.run(steps.apply, name, config, ingested, shard, state, out_dir)


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(record: RunRecord, output: str, work: str) -> tuple[str, str]:
    """Publish the version and delete the run's work folder. The deletion (0.8 s for
    the 1 GB of a 300,000-document run here) starts once the data are written and runs
    while the report page is drawn; a run that fails before that keeps its work folder, and
    the next run resumes from it."""
    cleanup = threading.Thread(target=shutil.rmtree, args=(work,), kwargs={"ignore_errors": True}, name="work-cleanup")
    try:
        version, path = publish(record, Store(output, record.dataset), written=cleanup.start)
    finally:
        if cleanup.ident is not None:
            cleanup.join()
    return version, str(path)


def _artifact_key(dataset: str, what: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", dataset.lower()).strip("-") + f"-{what}"


def _gather(futures: list[PrefectFuture[Any]], shards: list[Shard], stage: str, phase: str) -> list[Any]:
    """The results of ``futures`` (one per shard) in shard order, telling
    ``pipeline.progress`` of each shard as it finishes. Like ``PrefectFutureList.result``,
    raises the first failure as soon as it happens."""
    index = {future: i for i, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    for future in as_completed(list(futures)):
        i = index[future]
        results[i] = future.result()
        progress.shard_finished(stage, phase, shards[i].name, shards[i].rows)
    return results


@flow(name="curate", log_prints=False)
def curate(config: dict[str, Any], dataset: str) -> dict[str, Any]:
    """Curate one dataset of ``config`` (a ``PipelineConfig`` as a dict) into its store."""
    logger = logging.getLogger("pipeline")
    cfg = PipelineConfig.model_validate(config)
    ds = cfg.dataset(dataset)
    store = Store(cfg.output, ds.name)
    fp = run_fingerprint(cfg, ds.name)
    fingerprint = fp.value
    waiting = partial(logger.info, "%s: another run of the same inputs is in progress; waiting for it", ds.name)
    with store.work_lock(fp.work_key, on_wait=waiting):
        existing = store.find_fingerprint(fingerprint)
        if existing is not None:
            logger.info("inputs and config match %s: nothing new to publish", existing)
            return {"status": "unchanged", "dataset": ds.name, "version": existing, "path": str(store.dir / existing)}
        result = _curate(cfg, ds, store, fp)
    if cfg.finetune.trains(ds.name, result["kind"]):
        from flows.finetune import finetune  # torch and transformers, imported only to train

        trained = finetune(version=result["path"], config=cfg.finetune.settings, runs_dir=cfg.finetune.runs)
        result["finetune"] = {"path": trained["path"], "test": trained["metrics"]["test"]}
    return result


def _curate(cfg: PipelineConfig, ds: DatasetConfig, store: Store, fp: Fingerprint) -> dict[str, Any]:
    """The stages and the publishing of one dataset, holding its work folder."""
    logger = logging.getLogger("pipeline")
    fingerprint = fp.value
    work = store.work_dir(fp.work_key)
    cached = {"result_storage": work / "results"}
    ingested: Ingested = ingest_task.with_options(**cached)(ds.model_dump(mode="json"), cfg.shard_rows, str(work))
    input_rows = sum(s.rows for s in ingested.shards)
    logger.info("%s: %d rows in %d shards (%s)", ds.name, input_rows, len(ingested.shards), ingested.kind)

    shards = ingested.shards
    stages = cfg.stages_for(ds)
    reports: list[StageReport] = []
    removed: dict[str, list[str]] = {}
    scores: dict[str, list[str]] = {}
    report_order: dict[str, str] = {}
    key = fp.work_key
    for index, cls in enumerate(registry.stages()):
        name = cls.name
        stage_config = fp.stage_settings(name, getattr(stages, name).model_dump(mode="json"))
        rows = sum(s.rows for s in shards)
        stage = steps.make_stage(name, stage_config, ingested.info)
        if not stage.applies():
            reports.append(StageReport(stage=name, enabled=False, rows_in=rows, rows_out=rows))
            continue
        key = fp.step_key(key, name, stage_config)
        out_dir = str(work / f"{index}-{name}" / key[:12])
        started = time.perf_counter()
        state, decision = None, {}
        if stage.is_global:
            with progress.step(name, "summarize", rows):
                summaries = summarize_task.with_options(**cached).map(
                    unmapped(name), unmapped(stage_config), unmapped(ingested), shards, unmapped(out_dir)
                )
                paths: list[str] = _gather(summaries, shards, name, "summarize")
            with progress.step(name, "decide", None):
                decided = decide_task.with_options(**cached)(name, stage_config, ingested, paths, out_dir)
            state, decision = decided.state, decided.stats
        global_seconds = time.perf_counter() - started
        with progress.step(name, "apply", rows):
            futures = apply_task.with_options(**cached).map(
                unmapped(name), unmapped(stage_config), unmapped(ingested), shards, unmapped(state), unmapped(out_dir)
            )
            applied: list[Applied] = _gather(futures, shards, name, "apply")
        shards = [a.kept for a in applied]
        removed[name] = [a.removed for a in applied if a.removed]
        scores[stage.report_name or name] = [a.scores for a in applied if a.scores]
        if stage.report_sort_by:
            report_order[stage.report_name or name] = stage.report_sort_by
        report = StageReport.from_shards(name, applied, extra_seconds=global_seconds, decision=decision)
        reports.append(report)
        logger.info("%s: %d -> %d rows (%d changed)", name, report.rows_in, report.rows_out, report.rows_changed)

    record = RunRecord(
        dataset=ds.name,
        info=ingested.info,
        fingerprint=fingerprint,
        inputs=fp.inputs,
        config=fp.payload,
        config_hash=fp.config_hash,
        input_rows=input_rows,
        final=shards,
        removed=removed,
        scores=scores,
        stages=reports,
        report_order=report_order,
        extra=fp.records(),
    )
    version, path = publish_task(record, cfg.output, str(work))
    stage_rows = [
        {
            "stage": r.stage,
            "rows_in": r.rows_in if r.enabled else "off",
            "rows_out": r.rows_out if r.enabled else "off",
            "changed": r.rows_changed,
            "top_reasons": format_reasons(r.reasons),
        }
        for r in reports
    ]
    create_table_artifact(key=_artifact_key(ds.name, "stages"), table=stage_rows, description=f"{ds.name} {version}: rows per stage")
    counts = Store(cfg.output, ds.name).manifest(version)["counts"]
    kept, removed_rows = counts["kept_rows"], counts["removed_rows"]
    added = {origin: n for origin, n in counts.get("origins", {}).items() if origin != "original"}
    report = (Path(path) / "report.html").resolve()
    create_link_artifact(
        key=_artifact_key(ds.name, "report"), link=report.as_uri(), link_text=f"{ds.name} {version} report",
        description=f"{ds.name} {version}: report.html (plots, removal examples, label issues)",
    )
    create_markdown_artifact(
        key=_artifact_key(ds.name, "summary"),
        markdown=f"**{ds.name} {version}**: {input_rows} rows in, {kept} kept, {removed_rows} removed"
        + "".join(f", {n} {origin} rows added" for origin, n in added.items())
        + f".\n\nPublished at `{path}`; report: [{report}]({report.as_uri()}).",
        description=f"{ds.name} {version}",
    )
    return {
        "status": "published",
        "dataset": ds.name,
        "kind": ingested.kind,
        "version": version,
        "path": path,
        "input_rows": input_rows,
        "kept_rows": kept,
        "removed_rows": removed_rows,
        "added_rows": added,
        "stages": [asdict(r) for r in reports],
    }

"""The ``curate`` flow: inputs -> stages -> a published version, as Prefect tasks.

One task per stage step and shard, passing shard paths (see ``pipeline.steps``); a
per-shard task does its step where ``pipeline.executors`` sends it (here, or on a
Dask worker), so the same flow runs in-process or scaled out. Task results are
persisted under the run's work folder and cached by their inputs and source (never
by run id), and after each stage a checkpoint is written (``pipeline.checkpoint``) and
the row copies that stage read are deleted, so a run that was killed resumes: the
re-run starts after the last finished stage, finds the finished steps of the stage it
stopped in cached, and does only the rest.

The work folder is named by what decides the ingested shards (input contents, column
mapping, shard size), and each stage writes to a sub-folder named by its step key, its
settings chained to those of the stages before it (``pipeline.fingerprint``). So a
changed input never reuses a stale result, and a checkpoint is used only by a run whose
settings match up to its stage; a run with other settings goes through every stage and
takes from the cache what is still there.
The flow knows no stage by name: it runs what ``pipeline.stages.registry`` lists. The folder is removed once the
version is published. Runs of the same inputs share it, so they take turns under
``Store.work_lock``: the second waits, then finds the version the first published, or
resumes from its cache.

A cached result is trusted only while the files it names exist: a run killed while its
work folder was being deleted, or a hand that deleted some of it, leaves results that
point at nothing, and those steps run again (:func:`_complete`). A full disk ends the
run with one line and deletes its work folder, which would otherwise keep the disk full
for every later run; a run that removes every row publishes nothing and says why.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from prefect import Task, flow, task, unmapped
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.futures import PrefectFuture, as_completed

from pipeline import checkpoint, executors, memory, progress, steps
from pipeline.card import format_reasons
from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError
from pipeline.files import disk_full
from pipeline.fingerprint import Fingerprint, run_fingerprint
from pipeline.inputs import DatasetConfig
from pipeline.readers.bad_records import STAGE as BAD_RECORDS
from pipeline.stages import registry
from pipeline.stages.base import Stage
from pipeline.steps import Applied, Decided, Ingested, Shard
from pipeline.store import Store
from pipeline.version import RunRecord, StageReport, publish

_CACHED = {"cache_policy": INPUTS + TASK_SOURCE, "persist_result": True}


@task(name="ingest", **_CACHED)
def ingest_task(dataset: dict[str, Any], shard_rows: int, work_dir: str) -> Ingested:
    return memory.releasing(steps.ingest, dataset, shard_rows, work_dir)


@task(name="summarize", task_run_name="{name}-summarize-{shard.name}", **_CACHED)
def summarize_task(name: str, config: dict[str, Any], ingested: Ingested, shard: Shard, out_dir: str) -> str:
    return executors.run(steps.summarize, name, config, ingested, shard, out_dir)


@task(name="decide", task_run_name="{name}-decide", **_CACHED)
def decide_task(name: str, config: dict[str, Any], ingested: Ingested, summaries: list[str], out_dir: str) -> Decided:
    return memory.releasing(steps.decide, name, config, ingested, summaries, out_dir)  # here, not on a worker


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


def _outputs(result: Ingested | Decided | Applied | str) -> list[str]:
    """The files a step's result names."""
    if isinstance(result, str):
        return [result]
    if isinstance(result, Ingested):
        return [shard.path for shard in (*result.shards, result.rejected) if shard is not None]
    if isinstance(result, Decided):
        return [result.state]
    return [path for path in (*result.kept.files, result.removed, result.scores) if path]


def _complete(result: Ingested | Decided | Applied | str) -> bool:
    """Whether every file ``result`` names exists. Prefect's cache keeps a result as
    long as its record does, whatever became of the files it names; the flow checks
    them itself and computes a result whose files are gone again, with
    ``refresh_cache``. (A step's outputs are written atomically: a file that exists
    is whole.)"""
    return all(os.path.exists(path) for path in _outputs(result))


def _recomputed(name: str, count: int) -> None:
    logging.getLogger("pipeline").info("%s: %d cached result(s) name files that are gone; computing again", name, count)


def _call(task_: Task, name: str, *args: Any) -> Any:
    """``task_(*args)``; a result taken from the cache whose files are gone is computed again."""
    result = task_(*args)
    if not _complete(result):
        _recomputed(name, 1)
        result = task_.with_options(refresh_cache=True)(*args)
    return result


def _map(task_: Task, stage: str, phase: str, shards: list[Shard], before: tuple, after: tuple) -> list[Any]:
    """``task_(*before, shard, *after)`` for every shard, results in shard order; the
    results taken from the cache whose files are gone are computed again."""

    def submit(t: Task, subset: list[Shard]) -> list[Any]:
        futures = t.map(*(unmapped(a) for a in before), subset, *(unmapped(a) for a in after))
        return _gather(futures, subset, stage, phase)

    results = submit(task_, shards)
    stale = [i for i, result in enumerate(results) if not _complete(result)]
    if stale:
        _recomputed(f"{stage} {phase}", len(stale))
        again = submit(task_.with_options(refresh_cache=True), [shards[i] for i in stale])
        for i, result in zip(stale, again):
            results[i] = result
    return results


def _gather(futures: list[PrefectFuture[Any]], shards: list[Shard], stage: str, phase: str) -> list[Any]:
    """The results of ``futures`` (one per shard) in shard order, telling
    ``pipeline.progress`` of each complete shard as it finishes. The first failure is
    raised once the shards still running have stopped: until then they write into the
    work folder, and a run that fails (a full disk) deletes that folder only after."""
    index = {future: i for i, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    try:
        for future in as_completed(list(futures)):
            i = index[future]
            results[i] = future.result()
            if _complete(results[i]):
                progress.shard_finished(stage, phase, shards[i].name, shards[i].rows)
    except Exception:  # not on Ctrl-C: that stops at once
        for future in futures:
            future.wait()
        raise
    return results


@flow(name="curate", log_prints=False)
def curate(config: dict[str, Any], dataset: str) -> dict[str, Any]:
    """Curate one dataset of ``config`` (a ``PipelineConfig`` as a dict) into its store."""
    logger = logging.getLogger("pipeline")
    cfg = PipelineConfig.model_validate(config)
    ds = cfg.dataset(dataset)
    store = Store(cfg.output, ds.name)
    for stale in store.remove_stale():
        logger.info("%s: removed %s, left by a run that was killed while publishing", ds.name, stale)
    fp = run_fingerprint(cfg, ds.name)
    fingerprint = fp.value
    waiting = partial(logger.info, "%s: another run of the same inputs is in progress; waiting for it", ds.name)
    with store.work_lock(fp.work_key, on_wait=waiting):
        existing = store.find_fingerprint(fingerprint)
        if existing is not None:
            logger.info("inputs and config match %s: nothing new to publish", existing)
            return {"status": "unchanged", "dataset": ds.name, "version": existing, "path": str(store.dir / existing)}
        try:
            result = _curate(cfg, ds, store, fp)
        except Exception as exc:
            if not disk_full(exc):
                raise
            store.remove_work(fp.work_key)
            free = shutil.disk_usage(store.dir).free
            raise PipelineError(
                f"disk full: no space left on the device of the output folder {cfg.output} ({exc}); nothing was "
                f"published, and this run's work files were deleted to give their space back ({free / 2**20:,.0f} MB "
                "free now): free more space or choose another --output, then run again"
            ) from exc
    if cfg.finetune.trains(ds.name, result["kind"]):
        from flows.finetune import finetune  # torch and transformers, imported only to train

        trained = finetune(version=result["path"], config=cfg.finetune.settings, runs_dir=cfg.finetune.runs)
        result["finetune"] = {"path": trained["path"], "test": trained["metrics"]["test"]}
    return result


def _check_rows_left(ds: DatasetConfig, input_rows: int, reports: list[StageReport]) -> None:
    """Refuse to publish a version without a row of the input: it would load as an
    empty dataset, and training on it fails far from the cause. Names the reasons."""
    removed = [(n, reason, report.stage) for report in reports for reason, n in report.reasons.items()]
    if sum(n for n, _, _ in removed) < input_rows:
        return
    why = ", ".join(f"{n:,} {reason} in stages.{stage}" for n, reason, stage in sorted(removed, reverse=True)[:3])
    raise PipelineError(
        f"dataset {ds.name}: every one of the {input_rows:,} input rows of {', '.join(ds.inputs)} was removed ({why}); "
        "nothing to publish: check the column mapping (columns.*) and the inputs, or relax those stages"
    )


@dataclass(frozen=True)
class _Step:
    """One stage of the run, in registry order."""

    index: int
    name: str
    stage: Stage
    config: dict[str, Any]
    key: str | None
    """Its step key; None when it does not apply to this dataset (off, or not for its kind)."""


def _plan(cfg: PipelineConfig, ds: DatasetConfig, fp: Fingerprint, ingested: Ingested) -> list[_Step]:
    """Every stage with its settings and step key, known before any runs: the keys
    chain from the work key through the stages that apply, so a checkpoint's key says
    whether the run it was written by had these settings up to its stage."""
    stages = cfg.stages_for(ds)
    plan, key = [], fp.work_key
    for index, cls in enumerate(registry.stages()):
        config = fp.stage_settings(cls.name, getattr(stages, cls.name).model_dump(mode="json"))
        stage = steps.make_stage(cls.name, config, ingested.info)
        if stage.applies():
            key = fp.step_key(key, cls.name, config)
        plan.append(_Step(index, cls.name, stage, config, key if stage.applies() else None))
    return plan


def _curate(cfg: PipelineConfig, ds: DatasetConfig, store: Store, fp: Fingerprint) -> dict[str, Any]:
    """The stages and the publishing of one dataset, holding its work folder."""
    logger = logging.getLogger("pipeline")
    fingerprint = fp.value
    work = store.work_dir(fp.work_key)
    cached = {"result_storage": work / "results"}
    ingest = ingest_task.with_options(**cached)
    dataset = (ds.model_dump(mode="json"), cfg.shard_rows, str(work))
    saved = checkpoint.load(work)
    ingested: Ingested = saved.ingested if saved else _call(ingest, "ingest", *dataset)
    plan = _plan(cfg, ds, fp, ingested)
    if saved and (saved.index >= len(plan) or plan[saved.index].key != saved.key):
        saved = None  # stopped with other settings before that stage: its rows do not apply
        ingested = _call(ingest, "ingest", *dataset)
    input_rows = sum(s.rows for s in ingested.shards)
    logger.info("%s: %d rows in %d shards (%s)", ds.name, input_rows, len(ingested.shards), ingested.kind)
    bad = ingested.rejected.rows if ingested.rejected is not None else 0
    if saved is not None:
        shards, reports, removed, scores, report_order = (
            saved.shards, saved.reports, saved.removed, saved.scores, saved.report_order
        )
        logger.info("%s: resuming after %s, which a stopped run finished", ds.name, plan[saved.index].name)
    else:
        shards, reports, removed, scores, report_order = ingested.shards, [], {}, {}, {}
        if ingested.rejected is not None:  # on_bad_record: skip; the bad records are input rows too
            reasons = ingested.rejected_reasons
            reports.append(StageReport(BAD_RECORDS, True, input_rows + bad, input_rows, reasons=reasons))
            removed[BAD_RECORDS] = [ingested.rejected.path]
            if bad:
                logger.warning("%s: %d bad record(s) skipped (%s)", ds.name, bad, format_reasons(reasons))
    input_rows += bad
    for step in plan[saved.index + 1 if saved else 0 :]:
        name, stage, stage_config, key = step.name, step.stage, step.config, step.key
        rows = sum(s.rows for s in shards)
        if key is None:
            reports.append(StageReport(stage=name, enabled=False, rows_in=rows, rows_out=rows))
            continue
        out_dir = str(work / f"{step.index}-{name}" / key[:12])
        started = time.perf_counter()
        state, decision = None, {}
        if stage.is_global and (decided := steps.decided(out_dir)) is not None:
            # decided by an earlier run, whose summaries were deleted after it
            state, decision = decided.state, decided.stats
        elif stage.is_global:
            with progress.step(name, "summarize", rows):
                summarize = summarize_task.with_options(**cached)
                common = (name, stage_config, ingested)
                paths: list[str] = _map(summarize, name, "summarize", shards, common, (out_dir,))
            with progress.step(name, "decide", None):
                decide = decide_task.with_options(**cached)
                decided: Decided = _call(decide, f"{name} decide", name, stage_config, ingested, paths, out_dir)
            state, decision = decided.state, decided.stats
        global_seconds = time.perf_counter() - started
        with progress.step(name, "apply", rows):
            apply = apply_task.with_options(**cached)
            common = (name, stage_config, ingested)
            applied: list[Applied] = _map(apply, name, "apply", shards, common, (state, out_dir))
        before, shards = shards, [a.kept for a in applied]
        removed[name] = [a.removed for a in applied if a.removed]
        scores[stage.report_name or name] = [a.scores for a in applied if a.scores]
        if stage.report_sort_by:
            report_order[stage.report_name or name] = stage.report_sort_by
        report = StageReport.from_shards(name, applied, extra_seconds=global_seconds, decision=decision)
        reports.append(report)
        logger.info("%s: %d -> %d rows (%d changed)", name, report.rows_in, report.rows_out, report.rows_changed)
        checkpoint.Checkpoint(step.index, key, ingested, shards, reports, removed, scores, report_order).save(work)
        checkpoint.drop_superseded(before, shards, work)

    _check_rows_left(ds, input_rows, reports)
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

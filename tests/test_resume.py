"""Resume after SIGKILL, and two runs on one store at once, with real processes.

Each run is ``python -m pipeline run`` in a process of its own, against the session's
real Prefect server (``tests/servers.py``), or with Prefect's temporary server where
what is tested is that server's fate. A run is killed with SIGKILL as soon as the work
folder of a late stage appears, or its version's staging folder; which steps the next
run took from the cache is read from Prefect's own log lines (``Task run
'near_dedup-shard-00003' - Finished in state Cached(type=COMPLETED)``).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.stages.registry import stage_names
from pipeline.store import Store
from tests.servers import REPO, prefect_api, service_env  # noqa: F401 (fixture)

ROWS = 2400
SHARD_ROWS = 300
"""Eight shards: a stage is eight tasks or more, long enough to be killed in."""
SETTINGS = (f"shard_rows={SHARD_ROWS}", "stages.language.enabled=false")
RUN_SECONDS = 240
SPLIT = f"{stage_names().index('split')}-split"
"""The work folder of the last stage that runs (augment and rehearsal are off)."""
WORDS = (
    "the", "of", "and", "to", "in", "for", "on", "with", "as", "by", "at", "from", "that", "this", "river",
    "market", "city", "garden", "table", "window", "morning", "evening", "winter", "summer", "music", "paper",
    "letter", "story", "little", "great", "small", "early", "late", "green", "quiet", "bright", "heavy",
    "light", "open", "close", "walk", "speak", "write", "read", "build", "carry", "follow", "bring", "find",
    "keep", "teacher", "doctor", "farmer", "driver", "neighbour", "friend", "family", "village", "harbour",
    "station", "library", "kitchen",
)
FINISHED = re.compile(r"Task run '([^']+)' - Finished in state (\w+)")


def write_corpus(path: Path, rows: int, seed: int = 0) -> Path:
    """Documents of 20-60 words, with exact copies (every 20th row) and copies with
    one word changed (every 20th, offset by 10) for the dedup stages. No labels: the
    label stage would add seconds to every run and nothing to what is tested."""
    rng = random.Random(seed)
    texts: list[str] = []
    for i in range(rows):
        if i % 20 == 19:
            text = texts[rng.randrange(len(texts))]
        elif i % 20 == 10:
            words = texts[rng.randrange(len(texts))].split()
            words[rng.randrange(len(words))] = rng.choice(WORDS)
            text = " ".join(words)
        else:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
        texts.append(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "data.jsonl", ROWS)


class Run:
    """``python -m pipeline run`` in its own process group, logging to a file; with
    ``api`` None, on Prefect's temporary server, at home in ``<out>/.prefect``."""

    def __init__(self, api: str | None, data: Path, out: Path, *sets: str, name: str = "run") -> None:
        self.out = out
        self.log = out.parent / f"{out.name}-{name}.log"
        env = service_env(out.parent / ".prefect-client", api)
        if api is None:
            del env["PREFECT_HOME"]  # the command's own choice: <out>/.prefect
        env["PREFECT_LOGGING_LEVEL"] = "INFO"  # the tests' own setting is WARNING
        args = [
            sys.executable, "-m", "pipeline", "run", "--input", str(data), "--output", str(out), "-q", "-v",
            *(arg for value in (*SETTINGS, *sets) for arg in ("--set", value)),
        ]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self) -> str:
        """Wait for the run to end well; its output."""
        try:
            code = self.process.wait(RUN_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise
        assert code == 0, f"run failed ({code}):\n{self.text()[-3000:]}"
        return self.text()

    def kill_when(self, pattern: str, group: bool = True) -> None:
        """SIGKILL the run as soon as a new path matches ``pattern`` (a glob under
        the output folder): one that did not match when the run started. With
        ``group`` False, the command's process alone, as ``kill -9 PID`` does: the
        processes it started live on."""
        before = set(self.out.glob(pattern))
        deadline = time.monotonic() + RUN_SECONDS
        while not set(self.out.glob(pattern)) - before:
            if self.process.poll() is not None:
                raise AssertionError(f"the run ended ({self.process.returncode}) before {pattern} appeared:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                os.killpg(self.process.pid, signal.SIGKILL)
                raise AssertionError(f"{pattern} did not appear in {RUN_SECONDS} s")
            time.sleep(0.01)
        if group:
            os.killpg(self.process.pid, signal.SIGKILL)
        else:
            os.kill(self.process.pid, signal.SIGKILL)
        assert self.process.wait(30) == -signal.SIGKILL


def task_states(log: str) -> dict[str, set[str]]:
    """Final state names of the task runs in ``log``, by stage (``ingest`` and
    ``publish`` count as stages)."""
    states: dict[str, set[str]] = defaultdict(set)
    for task_run, state in FINISHED.findall(log):
        states[task_run.split("-")[0]].add(state)
    return dict(states)


def without_timings(value: Any) -> Any:
    """``value`` without its ``seconds`` entries, in JSON strings too (the stage
    table's ``decision`` column)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    if isinstance(value, str) and value.startswith("{"):
        return without_timings(json.loads(value))
    return value


def assert_same_version(a: Path, b: Path) -> None:
    """Same fingerprint, counts and Parquet contents (stage timings aside)."""
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma["fingerprint"] == mb["fingerprint"]
    assert ma["counts"] == mb["counts"]
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*.parquet"))
    assert files == sorted(str(p.relative_to(b)) for p in b.rglob("*.parquet"))
    for name in files:
        ta, tb = (pq.read_table(p / name) for p in (a, b))
        if name == "reports/stages.parquet":
            assert without_timings(ta.to_pylist()) == without_timings(tb.to_pylist())
        else:
            assert ta.equals(tb), f"{name} differs"


def assert_clean(dataset_dir: Path) -> None:
    """No half-written version or its lock, and no work folder or lock left behind."""
    assert not [p.name for p in dataset_dir.iterdir() if p.name.startswith(".staging")]
    work = dataset_dir / ".work"
    assert not work.exists() or not any(work.iterdir()), sorted(p.name for p in work.iterdir())


def curate_in_process(api: str, data: Path, out: Path) -> None:
    """The uninterrupted run to compare with: the flow in this process (no start-up
    cost), on the same server and settings as :class:`Run`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.curate import curate
    from pipeline.config import load_config

    config = load_config(None, inputs=[str(data)], output=str(out), overrides=list(SETTINGS))
    with temporary_settings({PREFECT_API_URL: api}):
        assert curate(config=config.model_dump(mode="json"), dataset="data")["status"] == "published"


@pytest.fixture(scope="module")
def whole(corpus: Path, tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Path:  # noqa: F811
    """The version an uninterrupted run publishes from ``corpus``."""
    out = tmp_path_factory.mktemp("whole") / "out"
    curate_in_process(prefect_api, corpus, out)
    return out / "data" / "v0001"


def temporary_servers(home: Path) -> list[int]:
    """Pids of the live Prefect temporary servers whose home is ``home``."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"PREFECT_HOME={home}".encode() in environ and b"PREFECT__SERVER_EPHEMERAL=1" in environ and state != "Z":
            pids.append(int(entry.name))
    return pids


def row_copies(work: Path) -> list[Path]:
    """The row shards in a work folder: ingested, and kept by a stage."""
    return sorted([*work.glob("ingest/shard-*.parquet"), *work.glob("*/*/kept/*.parquet")])


@pytest.mark.integration
def test_killed_run_resumes_after_its_last_finished_stage(
    corpus: Path, whole: Path, tmp_path: Path, prefect_api: str  # noqa: F811
) -> None:
    """Killed while split summarises: the work folder holds one copy of the rows (the
    copies the earlier stages read are gone), and the next run starts at split (no
    task of a stage before it runs, not even from the cache) and publishes what an
    uninterrupted run publishes."""
    out = tmp_path / "out"
    Run(prefect_api, corpus, out).kill_when(f"data/.work/*/{SPLIT}/*/summaries/*.arrow")
    assert Store(out, "data").versions() == []
    (work,) = (out / "data" / ".work").glob("*/")
    copies = row_copies(work)
    assert len(copies) == ROWS // SHARD_ROWS, [str(p.relative_to(work)) for p in copies]

    states = task_states(Run(prefect_api, corpus, out, name="resumed").wait())
    assert set(states) == {"split", "publish"}, f"stages before split ran again: {states}"
    assert_same_version(whole, out / "data" / "v0001")
    assert_clean(out / "data")


@pytest.mark.integration
def test_a_run_with_other_settings_before_the_stopped_stage_starts_from_the_input(
    corpus: Path, whole: Path, tmp_path: Path, prefect_api: str  # noqa: F811
) -> None:
    """The killed run's rows after near_dedup are of its settings: a run with another
    near_dedup threshold cannot resume from them; it goes through the stages before
    again (from the cache where the rows they read are still there, computing the
    rest) and publishes a version of its own settings."""
    out = tmp_path / "out"
    Run(prefect_api, corpus, out).kill_when(f"data/.work/*/{SPLIT}")
    states = task_states(Run(prefect_api, corpus, out, "stages.near_dedup.threshold=0.95", name="changed").wait())
    assert states["near_dedup"] == {"Completed"}, states
    manifest = Store(out, "data").manifest("v0001")
    assert manifest["config"]["stages"]["near_dedup"]["threshold"] == 0.95
    assert manifest["counts"]["kept_rows"] > json.loads((whole / "manifest.json").read_text())["counts"]["kept_rows"]
    assert_clean(out / "data")


@pytest.mark.integration
def test_cached_results_whose_files_are_gone_are_computed_again(
    corpus: Path, whole: Path, tmp_path: Path, prefect_api: str  # noqa: F811
) -> None:
    """What a run killed while deleting its work folder leaves (publishing deletes it
    while the report is drawn): cached results whose files are gone. The next run
    must not trust them, and computes what is missing."""
    out = tmp_path / "out"
    Run(prefect_api, corpus, out).kill_when(f"data/.work/*/{SPLIT}")
    (work,) = (out / "data" / ".work").glob("*/")
    files = sorted(p for p in work.rglob("*") if p.is_file() and "results" not in p.relative_to(work).parts)
    for path in random.Random(0).sample(files, len(files) // 2):
        path.unlink()
    states = task_states(Run(prefect_api, corpus, out, name="resumed").wait())
    # A stage that left a shard unchanged passes the shard it read on (no copy), so
    # which stages lost files depends on the sample; some must have lost a part.
    mixed = [stage for stage, seen in states.items() if seen == {"Cached", "Completed"}]
    assert mixed, f"no stage took some steps from the cache and computed those missing files again: {states}"
    assert_same_version(whole, out / "data" / "v0001")
    assert_clean(out / "data")


@pytest.mark.integration
def test_runs_at_once_on_one_store_publish_one_version_per_input(
    tmp_path: Path, prefect_api: str  # noqa: F811
) -> None:
    # Three runs start together on one store (both inputs are called data.jsonl, so
    # they are one dataset): two of the same input, one of another.
    a, b = (write_corpus(tmp_path / name / "data.jsonl", 1000, seed) for seed, name in enumerate("ab"))
    out = tmp_path / "out"
    runs = [Run(prefect_api, data, out, name=name) for data, name in ((a, "a1"), (a, "a2"), (b, "b"))]
    logs = [run.wait() for run in runs]
    store = Store(out, "data")
    assert store.versions() == ["v0001", "v0002"] and store.latest() == "v0002"
    sources = []
    for version in store.versions():
        manifest = store.manifest(version)
        assert manifest["version"] == version
        sources.append(manifest["inputs"][0]["path"])
        data = store.dir / version / "data"
        assert sum(pq.read_metadata(p).num_rows for p in data.glob("*.parquet")) == manifest["counts"]["kept_rows"]
    assert sorted(sources) == [str(a), str(b)]
    assert ["nothing new published" in log for log in logs].count(True) == 1, "one run of a publishes, the other finds it"
    assert_clean(store.dir)


def test_work_lock_makes_a_second_holder_wait_and_leaves_no_file(tmp_path: Path) -> None:
    store = Store(tmp_path, "data")
    events: list[str] = []
    first_in, second_waiting = threading.Event(), threading.Event()

    def second() -> None:
        first_in.wait()
        with store.work_lock("k" * 64, on_wait=second_waiting.set):
            events.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with store.work_lock("k" * 64):
        first_in.set()
        assert second_waiting.wait(10), "the second holder did not find the lock taken"
        events.append("first")
    thread.join(10)
    assert events == ["first", "second"]
    assert list((store.dir / ".work").iterdir()) == []
    with store.work_lock("k" * 64, on_wait=lambda: events.append("waited")):
        pass
    assert events == ["first", "second"], "a free lock must not call on_wait"


@pytest.mark.integration
@pytest.mark.parametrize(
    "when",
    ["data/.work/*/ingest/shard-00002.parquet", "data/.staging-*/data/*.parquet", "data/.staging-*/README.md"],
    ids=["ingesting", "publishing", "deleting-the-work-folder"],
)
def test_a_killed_run_leaves_nothing_that_the_next_does_not_clean_up(
    corpus: Path, whole: Path, tmp_path: Path, when: str
) -> None:
    """``kill -9`` of the command alone, as a user sends it, with Prefect's temporary
    server: the server lives on, and a run killed while publishing leaves its staging
    folder (and, once its data are written, a work folder being deleted). The next run
    stops that server, removes that folder, and publishes the version."""
    out = tmp_path / "out"
    killed = Run(None, corpus, out)
    try:
        killed.kill_when(when, group=False)
        orphans = temporary_servers(out / ".prefect")
        assert orphans, "the killed run's temporary server should outlive it"
        if ".staging" in when:
            assert [p for p in (out / "data").glob(".staging-*") if p.is_dir()]
        Run(None, corpus, out, name="next").wait()
        assert not set(orphans) & set(temporary_servers(out / ".prefect"))
        assert_same_version(whole, out / "data" / "v0001")
        assert_clean(out / "data")
    finally:
        for pid in temporary_servers(out / ".prefect"):  # never leave one behind, whatever failed
            os.kill(pid, signal.SIGKILL)

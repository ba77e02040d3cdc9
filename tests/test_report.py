"""``report.html`` of a real version: self-contained, capped, escaped, and renders in Chromium.

One small version is curated once for the module by the real stages. Its input plants
what the page must show: exact duplicates whose text holds a ``<script>`` tag (the
noise stage's HTML rule is off so the tag survives into the ledger), six German rows
(more than the examples shown per reason), a three-row near-duplicate cluster, a row
without a label and a null in an extra column that the ``missing`` stage fills.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline import steps
from pipeline.config import PipelineConfig, load_config
from pipeline.errors import PipelineError
from pipeline.files import file_sha256
from pipeline.fingerprint import config_hash
from pipeline.readers import expand_inputs
from pipeline.report import EXAMPLES_PER_REASON, LABEL_ISSUES_SHOWN, REPORT, build_report
from pipeline.stages.registry import stage_names
from pipeline.store import Store
from pipeline.version import RunRecord, StageReport, publish

SCRIPT = "<script>alert(1)</script>"
BASE = "The harbour festival returns this summer with boat races, street food and a concert on the pier at night"
ENGLISH = [
    ("news", "The committee approved the new budget for the public library on Tuesday evening."),
    ("food", "Slow-roasted tomatoes with garlic make a rich sauce for fresh pasta in winter."),
    ("sport", "The striker scored twice in the second half to win the championship final."),
    ("news", "Heavy rain flooded several streets near the river after the storm last night."),
    ("news", "The museum opened a new exhibition of early photographs from the harbour town."),
    ("sport", "Our rowing team trained every morning on the lake before the regional regatta."),
    ("food", "A small bakery on the corner sells warm bread and cinnamon rolls every morning."),
    ("news", "Students planted thirty young oak trees along the path behind the school."),
]
GERMAN = [
    "Der Ausschuss hat gestern den neuen Haushalt für die öffentliche Bibliothek genehmigt.",
    "Unser Team hat am Wochenende die alte Holzbrücke über den Bach repariert.",
    "Die Bäckerei an der Ecke verkauft jeden Morgen warmes Brot und Zimtschnecken.",
    "Starker Regen hat in der Nacht mehrere Straßen in der Nähe des Flusses überflutet.",
    "Die Schüler haben dreißig junge Eichen entlang des Weges hinter der Schule gepflanzt.",
    "Das Museum zeigt eine neue Ausstellung mit frühen Fotografien aus der Hafenstadt.",
]


def _rows() -> list[dict[str, Any]]:
    rows = [{"id": f"e{i}", "text": t, "label": label, "source": "web"} for i, (label, t) in enumerate(ENGLISH)]
    rows[0]["source"] = None  # filled by the missing stage (mode: "web")
    rows += [{"id": f"g{i}", "text": t, "label": "news", "source": "web"} for i, t in enumerate(GERMAN)]
    xss = f"Win a prize in the town raffle {SCRIPT} by sending your ticket number before Friday."
    rows += [{"id": f"x{i}", "text": xss, "label": "news", "source": "web"} for i in range(3)]
    rows += [
        {"id": "n0", "text": BASE + ".", "label": "news", "source": "web"},
        {"id": "n1", "text": BASE.replace("street food", "street foods") + ".", "label": "news", "source": "web"},
        {"id": "n2", "text": BASE.replace("night", "nights") + ".", "label": "news", "source": "web"},
        {"id": "m0", "text": "This row arrived without any label attached to it.", "label": None, "source": "web"},
    ]
    return rows


def _publish(cfg: PipelineConfig, work: Path) -> Path:
    """Run every stage of ``cfg``'s dataset with ``pipeline.steps`` and publish the result.

    The same steps in the same order as ``flows.curate``, minus Prefect: its test
    server takes half a minute to start on a small machine, and the flow itself is
    tested in ``test_flow``. What is published is a real version of the real stages.
    """
    ds = cfg.datasets[0]
    ingested = steps.ingest(ds.model_dump(mode="json"), cfg.shard_rows, str(work))
    shards = ingested.shards
    reports: list[StageReport] = []
    removed: dict[str, list[str]] = {}
    scores: dict[str, list[str]] = {}
    order: dict[str, str] = {}
    for index, name in enumerate(stage_names()):
        config = getattr(cfg.stages, name).model_dump(mode="json")
        stage = steps.make_stage(name, config, ingested.info)
        if not stage.applies():
            rows = sum(s.rows for s in shards)
            reports.append(StageReport(stage=name, enabled=False, rows_in=rows, rows_out=rows))
            continue
        out = str(work / f"{index}-{name}")
        state, decision = None, {}
        if stage.is_global:
            summaries = [steps.summarize(name, config, ingested, shard, out) for shard in shards]
            decided = steps.decide(name, config, ingested, summaries, out)
            state, decision = decided.state, decided.stats
        applied = [steps.apply(name, config, ingested, shard, state, out) for shard in shards]
        shards = [a.kept for a in applied]
        removed[name] = [a.removed for a in applied if a.removed]
        scores[stage.report_name or name] = [a.scores for a in applied if a.scores]
        if stage.report_sort_by:
            order[stage.report_name or name] = stage.report_sort_by
        reports.append(StageReport.from_shards(name, applied, decision=decision))
    payload = cfg.fingerprint_payload(ds)
    inputs = [{"path": str(f.path), "label": f.label, "sha256": file_sha256(f.path)} for f in expand_inputs(ds)]
    record = RunRecord(
        dataset=ds.name, info=ingested.info, fingerprint=config_hash({"inputs": inputs, "config": payload}),
        inputs=inputs, config=payload, config_hash=config_hash(payload),
        input_rows=sum(s.rows for s in ingested.shards),
        final=shards, removed=removed, scores=scores, stages=reports, report_order=order,
    )
    return publish(record, Store(cfg.output, ds.name))[1]


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published version of :func:`_rows`."""
    tmp = tmp_path_factory.mktemp("report")
    path = tmp / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    overrides = [
        "shard_rows=8",
        "stages.language.backend=fasttext",
        "stages.language.allowed=[en]",  # the six German rows are a real share of these rows
        "stages.noise.rules.html_tags=false",
        "stages.near_dedup.shingles=char",
    ]
    cfg = load_config(None, inputs=[str(path)], output=str(tmp / "out"), overrides=overrides)
    return _publish(cfg, tmp / "work")


@pytest.fixture(scope="module")
def page(version: Path) -> str:
    return build_report(version).read_text()


def _ledger(version: Path) -> dict[str, str]:
    table = pq.read_table(version / "reports" / "removed.parquet", columns=["row_id", "reason"])
    return dict(zip(table.column("row_id").to_pylist(), table.column("reason").to_pylist()))


def test_the_planted_problems_reached_the_ledger(version: Path) -> None:
    """Guards the fixture: the page tests below mean something only if these hold."""
    reasons = _ledger(version)
    assert [reasons.get(f"g{i}") for i in range(6)] == ["language:de"] * 6
    assert reasons.get("x1") == reasons.get("x2") == "exact_duplicate" and "x0" not in reasons
    assert reasons.get("m0") == "missing:label"
    assert sorted(r for r, why in reasons.items() if why == "near_duplicate") == ["n1", "n2"]


def test_page_is_self_contained(page: str) -> None:
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert references and all(ref.startswith("#") for ref in references), references
    assert all(u.startswith("#") for u in re.findall(r"url\(([^)]*)\)", page))
    without_namespaces = re.sub(r"""xmlns(?::\w+)?=["'][^"']*["']""", "", page)
    assert "http://" not in without_namespaces and "https://" not in without_namespaces
    ids = re.findall(r'\sid="([^"]+)"', page)  # six charts on one page: no id twice, none dangling
    targets = {ref[1:] for ref in references} | set(re.findall(r"url\(#([^)]*)\)", page))
    assert len(ids) == len(set(ids)) and targets <= set(ids)


def test_page_has_its_sections_and_plots(page: str, version: Path) -> None:
    manifest = json.loads((version / "manifest.json").read_text())
    for section in ("overview", "funnel", "reasons", "lengths", "languages", "labels", "duplicates", "fills"):
        assert f'<section id="{section}">' in page, section
    assert page.count('<svg class="chart"') == 6
    for key in ("config_hash", "fingerprint", "version"):
        assert manifest[key] in page
    assert manifest["inputs"][0]["sha256"] in page
    assert "<details" in page and "&#34;min_words&#34;: 3" in page  # the resolved config, escaped JSON
    # The label_issues stage ran on this classification version: its section is there;
    # sections whose report the version lacks (no augmentation) are left out, not shown empty.
    assert '<section id="label-issues">' in page
    assert 'id="augmented"' not in page
    assert ('<section id="splits">' in page) == (len(manifest["counts"]["splits"]) > 1)


def test_examples_are_capped_and_user_text_escaped(page: str) -> None:
    assert EXAMPLES_PER_REASON < len(GERMAN)
    shown = [i for i in range(len(GERMAN)) if f">g{i}</td>" in page]
    assert shown == list(range(EXAMPLES_PER_REASON))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and SCRIPT not in page
    assert ">x1</td>" in page  # the row with the tag is one of the examples


def test_duplicate_cluster_and_fills_are_shown(page: str) -> None:
    cluster = page[page.index('<div class="cluster">') :]
    cluster = cluster[: cluster.index("</div>\n    </div>")]
    members = re.findall(r'class="mono">(n\d)</span>', cluster)
    assert members[0] == "n0" and sorted(members) == ["n0", "n1", "n2"]  # the kept row first
    assert cluster.count("kept</span>") == 1 and cluster.count("similarity 0.9") == 2
    fills = page[page.index('<section id="fills">') :]
    filled = '<td>source</td><td class="num">1</td><td>mode</td><td class="mono">&#34;web&#34;</td>'
    assert filled in fills


def test_report_is_deterministic_and_written_atomically(version: Path, page: str) -> None:
    again = build_report(version)
    assert again == version / REPORT and again.read_text() == page
    assert not [p for p in version.iterdir() if p.name.endswith(".tmp")]


def test_report_of_a_staging_folder_from_a_given_manifest(version: Path, tmp_path: Path) -> None:
    staging = tmp_path / ".staging-x"
    shutil.copytree(version, staging, ignore=shutil.ignore_patterns("manifest.json", REPORT))
    with pytest.raises(PipelineError, match="no manifest.json"):
        build_report(staging)
    manifest = json.loads((version / "manifest.json").read_text())
    del manifest["version"]
    page = build_report(staging, manifest).read_text()
    assert "unpublished (staging)" in page and not (staging / "manifest.json").exists()
    with pytest.raises(PipelineError, match="not a version folder"):
        build_report(tmp_path, manifest)


def _add_later_reports(version: Path, target: Path) -> None:
    """``version`` as the split, label and augment stages will leave it: three split
    files with ``split``/``origin`` columns, augmented rows, and a label-issue report."""
    shutil.copytree(version, target)
    manifest = json.loads((target / "manifest.json").read_text())
    files = sorted((target / "data").glob("*.parquet"))
    kept = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
    kept = kept.drop_columns([c for c in ("split", "origin", "source_row_id", "augment_ops") if c in kept.column_names])
    for f in files:
        f.unlink()
    n = kept.num_rows
    kept = kept.append_column("origin", pa.array(["original"] * n))
    kept = kept.append_column("source_row_id", pa.nulls(n, pa.string()))
    first, given = kept.column("row_id")[0].as_py(), kept.column("label")[0].as_py()
    relabelled = pc.if_else(pc.equal(kept.column("row_id"), first), "art", kept.column("label"))  # a new label
    kept = kept.set_column(kept.schema.get_field_index("label"), "label", relabelled)
    added = kept.slice(0, 2).to_pylist()
    for i, row in enumerate(added):
        row.update(row_id=f"aug-{i}", origin="augmented", source_row_id=row["row_id"], label="sport")
    parts = {"train": pa.concat_tables([kept.slice(0, n - 2), pa.Table.from_pylist(added, kept.schema)]),
             "validation": kept.slice(n - 2, 1), "test": kept.slice(n - 1, 1)}
    for split, table in parts.items():
        table = table.append_column("split", pa.array([split] * table.num_rows))
        pq.write_table(table, target / "data" / f"{split}-{manifest['fingerprint'][:12]}-00000-of-00001.parquet")
    manifest["counts"]["splits"] = {split: t.num_rows for split, t in parts.items()}
    (target / "manifest.json").write_text(json.dumps(manifest))
    augmented = pa.table({"row_id": ["aug-0", "aug-1"], "source_row_id": [a["source_row_id"] for a in added],
                          "augment_ops": ["synonym", "synonym,swap"], "text": [SCRIPT, "two"]})
    pq.write_table(augmented, target / "reports" / "augmented.parquet")
    issues = pa.table({
        "row_id": [first] + [f"r{i}" for i in range(29)],
        "given_label": [given] + ["news"] * 29,
        "suggested_label": ["sport"] * 30,
        "label_quality": [i / 30 for i in range(30)],
        "suggested_probability": [1 - i / 30 for i in range(30)],
        "is_issue": [i < 25 for i in range(30)],
        "action": ["relabel"] + ["flag"] * 29,
        "decided_by": ["threshold"] * 30,
        "new_label": ["art"] + [None] * 29,
        "text": [SCRIPT] + [f"issue text {i}" for i in range(29)],
    })
    pq.write_table(issues, target / "reports" / "label_issues.parquet")


def test_sections_of_reports_added_by_later_stages(version: Path, tmp_path: Path) -> None:
    later = tmp_path / "v0002"
    _add_later_reports(version, later)
    page = build_report(later).read_text()
    for section in ("label-issues", "splits", "augmented"):
        assert f'<section id="{section}">' in page, section
    issues = page[page.index('<section id="label-issues">') : page.index("</section>", page.index('id="label-issues"'))]
    assert issues.count("<tr>") == LABEL_ISSUES_SHOWN + 1  # header + the worst rows only
    assert "30 rows scored, 25 flagged as issues" in issues and "relabel 1" in issues
    assert "&lt;script&gt;" in issues and SCRIPT not in page
    splits = page[page.index('<section id="splits">') :]
    assert re.search(r"<td>train</td><td class=\"num\">\d+</td><td class=\"num\">[\d.]+%</td>"
                     r"<td class=\"num\">\d+</td><td class=\"num\">2</td>", splits)
    assert "kept, with added rows" in page and "synonym 2, swap 1" in page
    assert "relabelled rows: 1" in page
    counts = dict(re.findall(r'<tr><td>(\w+)</td>((?:<td class="num">\d+</td>){3})</tr>', page))
    counts = {label: [int(n) for n in re.findall(r"\d+", cells)] for label, cells in counts.items()}
    assert counts["art"] == [0, 1, 1]  # input counts the relabelled row under its given label
    assert counts["sport"][2] == counts["sport"][1] + 2  # the two augmented rows


# ---- in a real browser ---------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
SCREENSHOT = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,4000"]


@needs_chromium
def test_chromium_renders_a_screenshot(version: Path, page: str, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *SCREENSHOT, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         (version / REPORT).as_uri()],
        capture_output=True, timeout=60, check=True,
    )
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 4000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50, "blank page"  # None: more colours than counted


@needs_chromium
def test_chromium_logs_no_errors_and_loads_nothing_but_the_file(version: Path, page: str, tmp_path: Path) -> None:
    events, dom = _devtools_session(version / REPORT, tmp_path / "profile")
    requests = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    assert requests == [(version / REPORT).as_uri()]
    console = [e for e in events if e["method"] in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown")]
    logged = [e["params"]["entry"] for e in events if e["method"] == "Log.entryAdded"]
    assert console == [] and [e for e in logged if e["level"] in ("error", "warning")] == []
    assert dom["charts"] == 6 and dom["drawn"] == 6 and dom["sections"] >= 8


@needs_chromium
def test_the_devtools_probe_sees_console_errors_and_requests(tmp_path: Path) -> None:
    """The two tests above pass on silence; this one shows the probe would hear noise."""
    noisy = tmp_path / "noisy.html"
    noisy.write_text('<p>x</p><img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script>')
    events, _ = _devtools_session(noisy, tmp_path / "profile")
    requests = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    assert "http://127.0.0.1:9/x.png" in requests
    assert any(e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error" for e in events)


def _devtools_session(report: Path, profile: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Open ``report`` in headless Chromium over the DevTools protocol, on loopback only.

    Returns every event of the page (console, log, network) up to its load, and what
    the rendered DOM holds: charts, charts with a drawn size, sections.
    """
    from websockets.sync.client import connect

    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        port, path = _devtools_endpoint(profile / "DevToolsActivePort")
        with connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30) as ws:
            return _CdpClient(ws).load(report.as_uri())
    finally:
        browser.terminate()
        browser.wait(timeout=30)


def _devtools_endpoint(active_port: Path, timeout: float = 30.0) -> tuple[str, str]:
    """Chromium writes its port and browser endpoint path to this file once it listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = active_port.read_text().split() if active_port.exists() else []
        if len(lines) == 2:
            return lines[0], lines[1]
        time.sleep(0.1)
    raise TimeoutError(f"chromium wrote no {active_port}")


class _CdpClient:
    """The few DevTools calls the test needs, over one flattened browser connection."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str) -> None:
        while not any(e["method"] == method for e in self.events):
            reply = json.loads(self.ws.recv(timeout=30))
            if "method" in reply:
                self.events.append(reply)

    def load(self, url: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.events.clear()  # about:blank's own events
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired")
        probe = """JSON.stringify({
            charts: document.querySelectorAll('svg.chart').length,
            drawn: [...document.querySelectorAll('svg.chart')]
                .filter(s => s.getBoundingClientRect().height > 50).length,
            sections: document.querySelectorAll('section').length})"""
        result = self.call("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session=session)
        page_events = [e for e in self.events if e.get("sessionId") == session]
        return page_events, json.loads(result["result"]["value"])

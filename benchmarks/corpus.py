"""A corpus of real text documents built from what this machine already holds, for
benchmarks.

The build reads local files only. The sources, in the order they are read:

``debian-descriptions``  long package descriptions from apt's ``*_i18n_Translation-en``
                         files, in ``/var/lib/apt/lists`` or ``benchmarks/.cache/apt-lists``.
                         Debian images usually set ``Acquire::Languages "none"`` and
                         their ``*_Packages`` files hold only the one-line descriptions,
                         so these are often absent; ``--fetch-debian-descriptions`` (the
                         one opt-in network step, run as root) has apt fetch them into the
                         cache without touching the system's lists.
``fortunes-en|de|es``    ``fortune`` cookies, one document per record (ASCII-art files
                         are skipped).
``python-docstrings``    module, class and function docstrings of the standard library,
                         read with ``ast`` (nothing is imported, so nothing runs).
``man-<lang>``           manual pages under ``/usr/share/man``, troff macros stripped
                         cheaply; ``man-en`` for the untranslated pages; at most
                         :data:`MAX_MAN_PAGES_PER_FAMILY` pages per command family.
``usr-share-doc``        README, NEWS, changelog, copyright and text/Markdown files
                         under ``/usr/share/doc``.

Long texts are cut into paragraph-sized documents (:data:`MIN_WORDS` to
:data:`MAX_WORDS` words; short neighbouring paragraphs are merged). Exact duplicates are
kept, because finding them is the pipeline's job, but one text is kept at most
:data:`MAX_COPIES` times so that license boilerplate does not swamp the corpus. The
documents are shuffled with a fixed seed, so any prefix mixes all sources, and the
result is cached as Parquet under ``benchmarks/.cache/``. The build is deterministic
for a given machine (same files, same Python).

    python benchmarks/corpus.py            # build (or read) and summarise
    python benchmarks/corpus.py --rebuild  # build again from the sources
    python benchmarks/corpus.py --fetch-debian-descriptions --rebuild   # as root, once

    from benchmarks.corpus import load_corpus
    table = load_corpus()                  # doc_id, text, source
"""

from __future__ import annotations

import argparse
import ast
import bz2
import gzip
import hashlib
import lzma
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CORPUS_VERSION = 2
"""Bump when the extraction changes, so stale caches are not read."""

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
MIN_WORDS = 20
MAX_WORDS = 400
FORTUNE_MIN_WORDS = 8
"""Fortunes are kept whole (merging unrelated cookies would not be natural text), so
they get a lower floor than the paragraph sources."""
MAX_COPIES = 10
MAX_DOCS_PER_FILE = 1_500
"""A few changelogs run to megabytes; cap what one file contributes..."""
MAX_BYTES_PER_FILE = 256_000
"""...and how much of it is read at all."""
MAX_MAN_PAGES_PER_FAMILY = 1_000
SEED = 20240601

APT_LISTS = Path("/var/lib/apt/lists")
FORTUNES = Path("/usr/share/games/fortunes")
MAN = Path("/usr/share/man")
DOC = Path("/usr/share/doc")

APT_CACHE_LISTS = CACHE_DIR / "apt-lists"
"""Where ``--fetch-debian-descriptions`` puts apt's Translation-en files, leaving the
system's own lists alone."""

TRANSLATIONS_HINT = (
    "no Debian long descriptions (*_i18n_Translation-en* in /var/lib/apt/lists or "
    "benchmarks/.cache/apt-lists); to add ~80k documents run, as root, "
    "`python benchmarks/corpus.py --fetch-debian-descriptions --rebuild`"
)
INSTALL_HINT = "apt-get install -y fortunes fortunes-de fortunes-es manpages manpages-de manpages-fr"

SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string()), ("source", pa.string())])


class CorpusError(RuntimeError):
    """The machine does not hold enough text for the corpus asked for."""


def log(msg: str) -> None:
    print(f"[corpus] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- chunking

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def word_count(text: str) -> int:
    """Whitespace words, with two CJK characters counted as one word."""
    n = len(text.split())
    if not text.isascii():
        n += len(_CJK.findall(text)) // 2
    return n


def _split_long(paragraph: str) -> list[str]:
    """Cut a paragraph above MAX_WORDS at line, then sentence, then word boundaries."""
    pieces = paragraph.split("\n") if "\n" in paragraph else re.split(r"(?<=[.!?])\s+", paragraph)
    sep = "\n" if "\n" in paragraph else " "
    out: list[str] = []
    buf: list[str] = []
    words = 0
    for piece in pieces:
        w = word_count(piece)
        if w > MAX_WORDS:  # one enormous line or sentence: cut by words
            toks = piece.split()
            pieces_w = [" ".join(toks[i : i + MAX_WORDS]) for i in range(0, len(toks), MAX_WORDS)]
        else:
            pieces_w = [piece]
        for p in pieces_w:
            w = word_count(p)
            if buf and words + w > MAX_WORDS:
                out.append(sep.join(buf))
                buf, words = [], 0
            buf.append(p)
            words += w
    if buf:
        out.append(sep.join(buf))
    return out


def chunk_paragraphs(paragraphs: Iterable[str], min_words: int = MIN_WORDS) -> list[str]:
    """Group consecutive paragraphs into documents of ``min_words`` to MAX_WORDS words.

    Short paragraphs are merged with the following ones (joined by a blank line) until
    the document is long enough; a short remainder joins the previous document when it
    fits and is dropped otherwise.
    """
    docs: list[str] = []
    buf: list[str] = []
    words = 0
    for para in paragraphs:
        para = para.strip()
        if not para:
            continue
        w = word_count(para)
        if w > MAX_WORDS:
            if buf and words >= min_words:
                docs.append("\n\n".join(buf))
            buf, words = [], 0
            docs.extend(p for p in _split_long(para) if word_count(p) >= min_words)
            continue
        if buf and words + w > MAX_WORDS:
            if words >= min_words:
                docs.append("\n\n".join(buf))
            buf, words = [], 0
        buf.append(para)
        words += w
        if words >= min_words:
            docs.append("\n\n".join(buf))
            buf, words = [], 0
    if buf and docs and words + word_count(docs[-1]) <= MAX_WORDS:
        docs[-1] = docs[-1] + "\n\n" + "\n\n".join(buf)
    return docs


def blank_line_paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


_NOISY_TOKEN = re.compile(r"https?:|www\.|\b[0-9a-f]{7,40}\b|[/\\@<>{}\[\]|=_]|\d|^[-*#+`]+$")


_NOT_LETTER = re.compile(r"[\W\d_]+")


def prose_like(paragraph: str) -> bool:
    """Mostly words: few tokens with digits, paths, links, hashes or markup, and mostly
    letters. Drops commit logs, file lists, tables and code from the doc sources."""
    tokens = paragraph.split()
    if not tokens:
        return False
    noisy = sum(map(bool, map(_NOISY_TOKEN.search, tokens)))
    if noisy > 0.2 * len(tokens):
        return False
    return len(_NOT_LETTER.sub("", paragraph)) >= 0.7 * sum(map(len, tokens))


def reflow(paragraph: str) -> str:
    """Join hard-wrapped lines into one line."""
    return " ".join(paragraph.split())


def read_text(path: Path, limit: int | None = None) -> str:
    """A file's text, decompressed by extension, decoded leniently; at most ``limit``
    bytes of it."""
    raw = path.read_bytes()
    name = path.name
    try:
        if name.endswith(".gz"):
            raw = gzip.decompress(raw)
        elif name.endswith(".bz2"):
            raw = bz2.decompress(raw)
        elif name.endswith(".xz"):
            raw = lzma.decompress(raw)
        elif name.endswith(".lz4"):  # apt's lists; lz4cat, else apt's own helper
            try:
                raw = subprocess.run(["lz4cat", str(path)], capture_output=True, check=True).stdout
            except FileNotFoundError:
                helper = ["/usr/lib/apt/apt-helper", "cat-file", str(path)]
                raw = subprocess.run(helper, capture_output=True, check=True).stdout
    except (OSError, EOFError, lzma.LZMAError, subprocess.CalledProcessError, FileNotFoundError):
        return ""
    if limit is not None and len(raw) > limit:
        raw = raw[:limit].rsplit(b"\n", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def regular_files(root: Path) -> list[Path]:
    """Regular files (no symlinks) under ``root``, in a stable order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath, f)
            if p.is_file() and not p.is_symlink():
                out.append(p)
    return out


# ------------------------------------------------------------------------- sources
# Every extractor maps one unit of work (a file, or a list of files) to a list of
# (source, text) pairs, so units can run in worker processes and come back in order.

Docs = list[tuple[str, str]]


def debian_translation_files() -> list[Path]:
    """apt's English description files, from the system lists or the cache (by name,
    the system's copy first)."""
    found: dict[str, Path] = {}
    for directory in (APT_LISTS, APT_CACHE_LISTS):
        for p in sorted(directory.glob("*_i18n_Translation-en*")):
            if p.is_file() and not p.name.endswith(".diff") and p.name not in found:
                found[p.name] = p
    return [found[name] for name in sorted(found)]


def fetch_debian_descriptions() -> None:
    """Download apt's Translation-en files into the cache (the one step that uses the
    network: the Debian mirror apt is configured with). Needs root, like apt-get."""
    (APT_CACHE_LISTS / "partial").mkdir(parents=True, exist_ok=True)
    cmd = [
        "apt-get", "update", "-qq",
        "-o", "Acquire::Languages=en",
        "-o", f"Dir::State::Lists={APT_CACHE_LISTS}",
        "-o", "Dir::Cache::pkgcache=",  # leave apt's binary caches alone
        "-o", "Dir::Cache::srcpkgcache=",
    ]
    log("running " + " ".join(cmd))
    try:
        subprocess.run(cmd, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise CorpusError(f"could not fetch Debian descriptions ({exc}); run it as root") from exc
    if not debian_translation_files():
        raise CorpusError("apt-get update fetched no Translation-en files")


def extract_debian_translations(path: Path) -> Docs:
    """``Description-en:`` fields: short line, then the long text indented by one space,
    `` .`` lines separating paragraphs."""
    docs: Docs = []
    for record in read_text(path).split("\n\n"):
        m = re.search(r"^Description-en: (.*)\n((?: .*\n?)*)", record, re.M)
        if not m:
            continue
        paragraphs, cur = [], []
        for line in m.group(2).splitlines():
            body = line[1:]
            if body.strip() == ".":
                paragraphs.append(cur)
                cur = []
            else:
                cur.append(body)
        paragraphs.append(cur)
        texts = []
        for lines in paragraphs:
            if not lines:
                continue
            if any(line.startswith(" ") for line in lines):  # verbatim (a list, a table)
                texts.append("\n".join(line.rstrip() for line in lines))
            else:
                texts.append(reflow(" ".join(lines)))
        docs.extend(("debian-descriptions", t) for t in chunk_paragraphs(texts))
    return docs


_ART_FORTUNES = {"art", "ascii-art", "asciiart"}


def fortune_files() -> list[tuple[str, Path]]:
    out = []
    for sub, source in ((FORTUNES, "fortunes-en"), (FORTUNES / "de", "fortunes-de"), (FORTUNES / "es", "fortunes-es")):
        if not sub.is_dir():
            continue
        for p in sorted(sub.iterdir()):
            if p.is_symlink() or not p.is_file() or p.suffix in (".dat", ".u8") or p.name in _ART_FORTUNES:
                continue
            out.append((source, p))
    return out


def extract_fortunes(item: tuple[str, Path]) -> Docs:
    source, path = item
    docs: Docs = []
    for record in re.split(r"^%\s*$", read_text(path), flags=re.M):
        text = "\n".join(line.rstrip() for line in record.strip("\n").splitlines()).strip()
        if not text:
            continue
        # ASCII art and tables: too few letters to be prose.
        letters = sum(c.isalpha() for c in text)
        if letters < 0.6 * sum(not c.isspace() for c in text):
            continue
        if FORTUNE_MIN_WORDS <= word_count(text) <= MAX_WORDS:
            docs.append((source, text))
    return docs


def python_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = sorted(
            d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test")
        )
        out.extend(Path(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return out


def extract_python_docstrings(paths: list[Path]) -> Docs:
    docs: Docs = []
    for path in paths:
        try:
            tree = ast.parse(read_text(path))
        except (SyntaxError, ValueError):
            continue
        nodes = [tree] + [
            n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        for node in nodes:
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc.split()) >= 5:
                docs.extend(("python-docstrings", t) for t in chunk_paragraphs(blank_line_paragraphs(doc)))
    return docs


# troff: inline escapes, then macros. Cheap, not exact.
_COMBINING = {":": "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", ",": "\u0327"}
_SPECIAL = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "lq": '"', "rq": '"', "dq": '"', "Bq": "\u201e",
    "oq": "'", "cq": "'", "aq": "'", "bq": "\u201a", "Fo": "\u00ab", "Fc": "\u00bb", "fo": "\u2039",
    "fc": "\u203a", "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122", "de": "\u00b0",
    "ss": "\u00df", "/l": "\u0142", "/L": "\u0141", "/o": "\u00f8", "/O": "\u00d8", "ae": "\u00e6",
    "AE": "\u00c6", "rs": "\\", "sl": "/", "at": "@", "ga": "`", "ha": "^", "ti": "~", "sh": "#",
    "mu": "\u00d7", "di": "\u00f7", "+-": "\u00b1", "->": "\u2192", "<-": "\u2190", "<=": "\u2264",
    ">=": "\u2265", "!=": "\u2260", "mc": "\u00b5", "*m": "\u03bc", "*p": "\u03c0", "pl": "+",
    "mi": "-", "eq": "=", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "\u27e8", "ra": "\u27e9",
    "dg": "\u2020", "OK": "\u2713", "tq": '"',
}


def _special_char(m: re.Match[str]) -> str:
    name = m.group(1) or m.group(2)
    if name in _SPECIAL:
        return _SPECIAL[name]
    if len(name) == 2 and name[0] in _COMBINING and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + _COMBINING[name[0]])
    if re.fullmatch(r"u[0-9A-F]{4,5}", name):
        return chr(int(name[1:], 16))
    return ""


_ESCAPES = [
    (re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\s[+-]?\d"), ""),  # size changes
    (re.compile(r"\\[*n](?:\[[^\]]*\]|\(..|.)"), ""),  # strings, registers
    (re.compile(r"\\[hvwo]'[^']*'"), ""),  # motions, widths, overstrikes
    (re.compile(r"\\\((..)|\\\[([^\]]*)\]"), _special_char),
    (re.compile(r"\\[-]"), "-"),
    (re.compile(r"\\[e\\]"), "\\\\"),
    (re.compile(r"\\[ ~0]"), " "),
    (re.compile(r"\\[&%|^,/:)]"), ""),
    (re.compile(r"\\c$"), ""),
]
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}
_TEXT_MACROS = {"B", "I", "SM", "SB", "Nd", "Dq", "Sq", "Ql", "Em", "Sy", "Li", "Pa", "Ar", "Nm", "Xr", "Fl", "Cm", "Va", "Ev"}
_BREAK_MACROS = {"PP", "P", "LP", "TP", "IP", "HP", "sp", "br", "Pp", "It", "Bl", "El", "Bd", "Ed", "RS", "RE", "TQ", "SY", "YS", "in"}
_COMMENT = re.compile(r'\\".*')
_SKIP_SECTIONS = {"NAME", "SYNOPSIS", "SEE ALSO", "FILES", "EXAMPLES", "EXAMPLE"}
_MDOC_WORD = re.compile(r"^(?:[A-Z][a-z][a-z]?|Ns|Pf|No)$")


def _troff_inline(text: str) -> str:
    if "\\" not in text:
        return text
    for pattern, repl in _ESCAPES:
        text = pattern.sub(repl, text)
    return text.replace("\\\\", "\\")


def _macro_args(rest: str) -> list[str]:
    return [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', rest)]


def troff_paragraphs(source: str) -> list[str]:
    """Prose paragraphs of a man page: text lines joined, macro lines dropped or kept
    for their text, no-fill blocks (examples, synopses) and tables skipped."""
    paragraphs: list[str] = []
    cur: list[str] = []
    nofill = False
    section = ""

    def flush() -> None:
        if cur:
            text = reflow(" ".join(cur))
            if text and section not in _SKIP_SECTIONS and prose_like(text):
                paragraphs.append(text)
            cur.clear()

    source = _COMMENT.sub("", source)
    for line in _troff_inline(source).splitlines():
        if line.startswith((".", "'")):
            macro, _, rest = line[1:].strip().partition(" ")
            if macro in ("nf", "EX", "TS", "Bd", "DS"):
                flush()
                nofill = True
                continue
            if macro in ("fi", "EE", "TE", "Ed", "DE"):
                nofill = False
                continue
            if nofill:
                continue
            if macro in ("SH", "SS", "Sh", "Ss"):
                flush()
                if macro in ("SH", "Sh"):
                    section = " ".join(_macro_args(rest)).upper()
                continue
            if macro == "so":  # the page is an alias of another
                return []
            if macro in _ALTERNATING:
                cur.append("".join(_macro_args(rest)))
            elif macro in _TEXT_MACROS:
                args = [a for a in _macro_args(rest) if not _MDOC_WORD.match(a)]
                cur.append(" ".join(args))
            elif macro in _BREAK_MACROS:
                flush()
                if macro in ("IP", "It") and rest:  # a tag: keep it with its text
                    args = [a for a in _macro_args(rest) if not _MDOC_WORD.match(a)]
                    if args and not re.fullmatch(r"[\d.]+[nmi]?", args[-1]):
                        cur.append(" ".join(args))
                    elif args[:-1]:
                        cur.append(" ".join(args[:-1]))
            continue  # any other request: dropped
        if nofill:
            continue
        if not line.strip():
            flush()
            continue
        cur.append(line)
    flush()
    return paragraphs


def man_files() -> list[tuple[str, Path]]:
    """Regular manual pages, at most MAX_MAN_PAGES_PER_FAMILY per command family (the
    name up to its first dash or underscore: one installed SDK can ship 16,000 ``gcloud_*`` pages),
    picked by a hash of the name so the sample spreads over the family."""
    if not MAN.is_dir():
        return []
    out = []
    for sub in sorted(MAN.iterdir()):
        if not sub.is_dir():
            continue
        lang = "en" if sub.name.startswith("man") else sub.name.split(".")[0]
        families: dict[str, list[Path]] = {}
        for p in regular_files(sub):
            families.setdefault(re.split(r"[-_.]", p.name, maxsplit=1)[0], []).append(p)
        chosen: list[Path] = []
        for pages in families.values():
            if len(pages) > MAX_MAN_PAGES_PER_FAMILY:
                pages = sorted(pages, key=lambda p: hashlib.md5(p.name.encode()).hexdigest())
                pages = pages[:MAX_MAN_PAGES_PER_FAMILY]
            chosen.extend(pages)
        out.extend((f"man-{lang}", p) for p in sorted(chosen))
    return out


def extract_man(items: list[tuple[str, Path]]) -> Docs:
    docs: Docs = []
    for source, path in items:
        paragraphs = troff_paragraphs(read_text(path))
        docs.extend((source, t) for t in chunk_paragraphs(paragraphs)[:MAX_DOCS_PER_FILE])
    return docs


_DOC_NAME = re.compile(
    r"^(?:readme|news|changelog|changes|copyright|authors|thanks|todo|history|faq|notes|install)"
    r"|\.(?:txt|md|rst)(?:\.gz)?$",
    re.I,
)
_DOC_SKIP = re.compile(r"\.(?:html?|json|css|js|pdf|ps|png|svg|c|h|py|pl|sh|tar|zip|xml)(?:\.gz)?$", re.I)


def doc_files() -> list[Path]:
    if not DOC.is_dir():
        return []
    return [p for p in regular_files(DOC) if _DOC_NAME.search(p.name) and not _DOC_SKIP.search(p.name)]


def extract_doc(paths: list[Path]) -> Docs:
    docs: Docs = []
    for path in paths:
        text = read_text(path, MAX_BYTES_PER_FILE)
        if "\x00" in text:
            continue
        paragraphs = []
        for para in blank_line_paragraphs(text):
            lines = [line.rstrip() for line in para.splitlines()]
            if not prose_like(para):
                continue
            paragraphs.append(textwrap.dedent("\n".join(lines)).strip())
        docs.extend(("usr-share-doc", t) for t in chunk_paragraphs(paragraphs)[:MAX_DOCS_PER_FILE])
    return docs


# --------------------------------------------------------------------------- build


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _run(pool: ProcessPoolExecutor, fn: Callable, units: list, label: str) -> Iterator[tuple[str, str]]:
    t0 = time.perf_counter()
    n = 0
    for docs in pool.map(fn, units, chunksize=1):
        n += len(docs)
        yield from docs
    log(f"  {label}: {n:,} docs from {len(units):,} units in {time.perf_counter() - t0:.1f}s")


def cache_path() -> Path:
    return CACHE_DIR / f"corpus-v{CORPUS_VERSION}.parquet"


def build_corpus(workers: int | None = None) -> pa.Table:
    """Read every source, chunk, cap duplicates, shuffle, write the cache, return it."""
    t0 = time.perf_counter()
    workers = workers or min(2, os.cpu_count() or 1)
    log(f"building corpus v{CORPUS_VERSION} with {workers} processes")
    translations = debian_translation_files()
    if not translations:
        log(TRANSLATIONS_HINT)
    plan = [
        (extract_debian_translations, translations, "debian-descriptions"),
        (extract_fortunes, fortune_files(), "fortunes"),
        (extract_python_docstrings, _batches(python_files(), 40), "python-docstrings"),
        (extract_man, _batches(man_files(), 200), "man pages"),
        (extract_doc, _batches(doc_files(), 20), "/usr/share/doc"),
    ]
    sources: list[str] = []
    texts: list[str] = []
    with ProcessPoolExecutor(workers) as pool:
        for fn, units, label in plan:
            if not units:
                log(f"  {label}: nothing found")
                continue
            for source, text in _run(pool, fn, units, label):
                sources.append(source)
                texts.append(text)

    # Light dedup: keep natural duplicates, at most MAX_COPIES of one text.
    seen: Counter[str] = Counter()
    keep = []
    for i, text in enumerate(texts):
        seen[text] += 1
        if seen[text] <= MAX_COPIES:
            keep.append(i)
    dropped = len(texts) - len(keep)
    per_source: Counter[str] = Counter()
    doc_ids = []
    for i in keep:
        doc_ids.append(f"{sources[i]}/{per_source[sources[i]]:06d}")
        per_source[sources[i]] += 1
    order = np.random.default_rng(SEED).permutation(len(keep))
    table = pa.table(
        {
            "doc_id": pa.array([doc_ids[j] for j in order], pa.string()),
            "text": pa.array([texts[keep[j]] for j in order], pa.string()),
            "source": pa.array([sources[keep[j]] for j in order], pa.string()),
        },
        schema=SCHEMA,
    )
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = cache_path().with_suffix(".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(cache_path())
    log(
        f"built {table.num_rows:,} docs ({dropped:,} copies beyond {MAX_COPIES} dropped) "
        f"in {time.perf_counter() - t0:.1f}s -> {cache_path()}"
    )
    return table


def load_corpus(min_docs: int = 100_000, rebuild: bool = False) -> pa.Table:
    """The corpus (``doc_id``, ``text``, ``source``), built on first use and cached.

    Raises :class:`CorpusError` when the machine holds fewer than ``min_docs``
    documents' worth of text, naming the packages that would add more.
    """
    path = cache_path()
    table = None
    if path.exists() and not rebuild:
        table = pq.read_table(path)
        if table.num_rows < min_docs:  # sources may have been installed since
            log(f"cached corpus has {table.num_rows:,} docs < {min_docs:,}; rebuilding")
            table = None
    if table is None:
        table = build_corpus()
    if table.num_rows < min_docs:
        hint = "" if debian_translation_files() else f"; {TRANSLATIONS_HINT}"
        raise CorpusError(
            f"only {table.num_rows:,} documents on this machine, {min_docs:,} needed: "
            f"run `{INSTALL_HINT}` as root{hint}"
        )
    return table


def digest(table: pa.Table) -> str:
    """A short fingerprint of the corpus content (not of its memory layout), to
    compare builds."""
    h = hashlib.sha256()
    for col in ("doc_id", "text", "source"):
        for value in table.column(col).to_pylist():
            h.update(value.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="build again even if cached")
    parser.add_argument("--min-docs", type=int, default=150_000)
    parser.add_argument(
        "--fetch-debian-descriptions",
        action="store_true",
        help="first download apt's Translation-en files into benchmarks/.cache/apt-lists (root)",
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.fetch_debian_descriptions:
            fetch_debian_descriptions()
        table = load_corpus(args.min_docs, rebuild=args.rebuild)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t0
    import pyarrow.compute as pc

    words = pc.utf8_split_whitespace(table.column("text"))
    lengths = np.asarray(pc.list_value_length(words).to_numpy(zero_copy_only=False))
    print(f"{table.num_rows:,} docs in {elapsed:.2f}s  ({cache_path()}, digest {digest(table)})")
    print(f"words/doc: median {int(np.median(lengths))}, mean {lengths.mean():.0f}, max {lengths.max()}")
    counts = Counter(table.column("source").to_pylist())
    for source, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {source:<22} {n:>8,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

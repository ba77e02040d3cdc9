#!/usr/bin/env python3
"""Regenerate the sample data sets, with known data-quality problems planted in them.

Usage::

    python sample_data/build.py

Writes ``classification.jsonl``, ``instruction.jsonl`` and ``planted.json`` next to this
file and prints the planted-problem table that ``README.md`` carries.

Sources (all real text, nothing generated):

* Debian packages ``fortunes``, ``fortunes-de``, ``fortunes-es``
  (``/usr/share/games/fortunes``): the English files give the classification rows
  (label = fortune file) and some instruction rows; the German and Spanish files give
  the "other language" rows of the classification set.
* Python package ``chatterbot-corpus``: English question/answer pairs for the
  instruction set; its German and Spanish pairs give that set's "other language" rows.

The base rows are cleaned of anything that would look like a planted problem (natural
duplicates, e-mail addresses, URLs, phone numbers, markup), so ``planted.json`` is the
complete ground truth. Every random choice comes from a generator seeded with ``SEED``
and sources are read in sorted order, so reruns are byte-identical.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEED = 20240611
HERE = Path(__file__).resolve().parent
FORTUNES = Path("/usr/share/games/fortunes")

MIN_CHARS, MAX_CHARS = 20, 600
"""Fortunes outside this length range are dropped."""

# Classification: fortune file -> at most this many rows (None: all that survive
# cleaning). "medicine" is the deliberately thin class.
CLS_CATEGORIES: dict[str, int | None] = {
    "computers": 700,
    "politics": 600,
    "science": 550,
    "art": 400,
    "law": None,
    "food": None,
    "sports": None,
    "medicine": None,
}
# Other-language fortune files and the (plausible) label they are given.
CLS_FOREIGN: dict[str, list[tuple[str, str]]] = {
    "de": [("de/computer", "computers"), ("de/ms", "computers"),
           ("de/mathematiker", "science"), ("de/fussball", "sports")],
    "es": [("es/informatica.fortunes", "computers"), ("es/ciencia.fortunes", "science"),
           ("es/arte.fortunes", "art"), ("es/poder.fortunes", "politics")],
}
# Fortune files (not used for classification) turned into instruction rows.
INS_FORTUNE_TOPICS = ("love", "education", "literature", "work", "wisdom", "pets")
INS_TARGET_BASE = 1400
"""Instruction base rows: all usable chatterbot pairs, topped up with fortunes."""
INS_FORTUNE_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("Share a quotation about {topic}.", ""),
    ("Give me a witty saying about {topic}.", ""),
    ("Tell me something funny about {topic}.", ""),
    ("Quote a fortune-cookie saying on the topic below.", "{topic}"),
    ("Write a short humorous remark about {topic}.", ""),
)
# chatterbot files whose multi-item lists are dialogues (each turn answers the one
# before); in the other files a list is one question followed by alternative answers.
DIALOGUE_FILES = {"conversations", "health", "sports", "psychology", "movies"}
TOPIC_INPUT_SHARE = 0.15
"""Share of chatterbot rows whose ``input`` names the category as context."""

# How many rows get each problem. Problems are planted on disjoint rows, and
# duplicated rows are left clean, so every row carries at most one problem.
CLS_COUNTS = {"mojibake": 60, "html": 60, "pii": 50, "boilerplate": 50,
              "exact_duplicate": 60, "near_duplicate": 60,
              "other_language": {"de": 45, "es": 45}}
CLS_FLIP_SHARE = 0.05
CLS_BLANKS = [("text", "empty", 8), ("text", "whitespace", 8), ("text", "null", 8),
              ("label", "null", 10), ("label", "empty", 6)]
INS_COUNTS = {"mojibake": 40, "html": 40, "pii": 40, "boilerplate": 40,
              "exact_duplicate": 40, "near_duplicate": 40,
              "other_language": {"de": 30, "es": 30}}
INS_BLANKS = [("output", "empty", 8), ("output", "whitespace", 6), ("output", "null", 8),
              ("instruction", "empty", 4), ("instruction", "null", 4)]

PROBLEMS = ("mojibake", "html", "pii", "blank", "boilerplate", "other_language",
            "exact_duplicate", "near_duplicate", "flipped_label")
DESCRIPTIONS = {
    "mojibake": "UTF-8 text (curly quotes, dashes, accents) mis-decoded as cp1252/latin-1",
    "html": "HTML: `<p>`, `<br>`, `<b>`/`<i>`, `<a href>`, `&amp;` `&quot;` `&#39;` entities",
    "pii": "fake e-mail addresses and phone numbers inserted",
    "blank": "empty, whitespace-only or null text/output/instruction/label",
    "boilerplate": "web boilerplate lines appended (subscribe, rights reserved, ...)",
    "other_language": "German or Spanish rows with a plausible label/category",
    "exact_duplicate": "copy of another row under a new id (some differ in whitespace/case)",
    "near_duplicate": "copy of another row with small word/punctuation edits",
    "flipped_label": "label changed to another category (classification only)",
}

BOILERPLATE = (
    "Click here to subscribe!",
    "All rights reserved.",
    "Copyright (c) 2019 Quote of the Day Ltd. All rights reserved.",
    "Share this: Facebook | Twitter | Email",
    "Subscribe to our newsletter for more great content!",
    "Terms of Use | Privacy Policy | Contact Us",
    "Posted in Uncategorized | Leave a comment",
    "Sent from my iPhone",
    "Read more...",
    "This message was sent to you because you subscribed. Unsubscribe here.",
)
FAKE_PEOPLE = (
    ("Jane Doe", "jane.doe@example.com"), ("John Smith", "john.smith@example.org"),
    ("Maria Garcia", "maria.garcia@example.net"), ("Li Wei", "li.wei@example.com"),
    ("Ngozi Okafor", "n.okafor@example.org"), ("Klaus Mueller", "k.mueller@example.net"),
    ("Priya Patel", "priya.patel@example.com"), ("Tom Baker", "tbaker42@example.org"),
)
PHONE_FORMATS = ("+1 555-01{d2}", "(201) 555-01{d2}", "+1-212-555-01{d2}",
                 "555-01{d2}", "+44 20 7946 0{d3}")
CLS_PII_TEMPLATES = (
    "{text}\n\nContact me at {email} or {phone}.",
    "{text}\n(Send corrections to {email}.)",
    "Call {phone} for more like this. {text}",
    "{text}\n-- forwarded by {name} <{email}>",
    "{text}\nQuestions? Ring {name} on {phone}.",
)
INS_PII_TEMPLATES = {
    "instruction": ("{text} My email is {email}.", "Hi, I'm {name} ({phone}). {text}",
                    "{text} You can reach me at {email} or {phone}."),
    "output": ("{text}\n\nFor more help, email {email} or call {phone}.",
               "{text} Feel free to call {name} on {phone}.",
               "{text}\n-- {name}, {email}"),
}
FILLERS = ("really", "truly", "just", "actually", "simply", "certainly", "quite",
           "always", "still", "perhaps")

# Things natural rows must not contain, so that they are not mistaken for planted ones.
CONFOUNDERS = re.compile(
    r"@|https?:|www\.|</?[A-Za-z]|&#?\w+;|\b\d{3}[-. ]\d{4}\b|\b\d{3}\)\s?\d{3}"  # PII, markup
    r"|[ÂÃ][\x80-\xbf£©®°±²³´µ·¹º»¼½¾¿]|â€"  # mojibake already in the source
)
WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline
NATURAL_NEAR_DUP = 0.4
"""Source texts this similar (character 5-gram Jaccard) to one already taken are skipped."""
PLANTED_NEAR_DUP = 0.75
"""Planted near duplicates are at least this similar to their original."""
STOPWORDS = {lang: set(words.split()) for lang, words in {
    "en": "the and is of to a in that it you not for with are be this have was on i",
    "de": "der die das und ist nicht ein eine ich zu sie es mit den auf sich auch wie wenn man",
    "es": "el la los las de que y en es un una por no se con para lo su del al",
    "fr": "le les des est une pas pour dans qui veut dire vous nous je il elle et du au ce",
}.items()}


# --------------------------------------------------------------------------- rows


@dataclass(eq=False)
class Row:
    """One output row; ``id`` is assigned after the final shuffle."""

    fields: dict[str, str | None]
    id: str = ""


@dataclass
class Plant:
    """One planted problem on one row; ``original`` is set for duplicates."""

    problem: str
    row: Row
    details: dict[str, Any] = field(default_factory=dict)
    original: Row | None = None


@dataclass(frozen=True)
class Spec:
    """How to plant problems into one data set."""

    name: str
    prefix: str
    columns: tuple[str, ...]
    text_fields: tuple[str, ...]
    """Columns that mojibake and near-duplicate edits may touch."""
    counts: dict[str, Any]
    blanks: list[tuple[str, str, int]]
    main_field: str
    """The free-text field that html, pii, boilerplate and mojibake go into by default."""
    label_field: str | None = None
    flip_share: float = 0.0


# ------------------------------------------------------------------------ sources


def check_sources() -> Path:
    """Return chatterbot-corpus's data folder; exit with one line if a source is missing."""
    missing: list[str] = []
    for package, probe in (("fortunes", "computers"), ("fortunes-de", "de/computer"),
                           ("fortunes-es", "es/ciencia.fortunes")):
        if not (FORTUNES / probe).is_file():
            missing.append(f"apt-get install {package}")
    try:
        import yaml  # noqa: F401
    except ImportError:
        missing.append("pip install pyyaml")
    try:
        import chatterbot_corpus
    except ImportError:
        missing.append("pip install --no-deps chatterbot-corpus")
    if missing:
        sys.exit("sample_data/build.py: missing sources; install with: " + "; ".join(missing))
    return Path(chatterbot_corpus.__file__).resolve().parent / "data"


def clean_fortune(raw: str) -> str:
    """Drop each line's indentation (attribution tabs) and trailing blanks; keep the rest."""
    lines = [line.strip() for line in raw.strip("\n").split("\n")]
    return "\n".join(lines).strip()


def usable(text: str) -> bool:
    """Is a source text fit for a base row: real prose, sensible length, no confounders?"""
    visible = [c for c in text if not c.isspace()]
    if not (MIN_CHARS <= len(text) <= MAX_CHARS) or not visible:
        return False
    letters = sum(c.isalpha() for c in visible)
    clean = not CONFOUNDERS.search(text) and not CONTROL.search(text)
    return letters / len(visible) >= 0.6 and clean


def stopword_hits(text: str, lang: str) -> int:
    return sum(w in STOPWORDS[lang] for w in re.findall(r"\w+", text.lower()))


def in_language(text: str, lang: str) -> bool:
    """Crude check that keeps language identification unambiguous: the text has at least
    as many stopwords of ``lang`` as of any other language (two or more, and strictly
    more, if ``lang`` is not English)."""
    hits = {code: stopword_hits(text, code) for code in STOPWORDS}
    others = max(n for code, n in hits.items() if code != lang)
    return hits[lang] >= others and (lang == "en" or hits[lang] >= 2 and hits[lang] > others)


def norm_key(text: str) -> str:
    """Dedup key: lower-cased words only."""
    return " ".join(re.findall(r"\w+", text.lower()))


def shingles(text: str, k: int = 5) -> set[str]:
    """Lower-cased character k-grams, whitespace collapsed."""
    t = " ".join(text.lower().split())
    return {t[i:i + k] for i in range(max(1, len(t) - k + 1))}


def jaccard(a: str, b: str) -> float:
    """Jaccard similarity of the character 5-gram sets of two texts."""
    sa, sb = shingles(a), shingles(b)
    return round(len(sa & sb) / len(sa | sb), 3)


class NearDupIndex:
    """Remembers texts taken so far and refuses ones too similar to any of them, so the
    sources' own duplicates and near duplicates never reach the base rows."""

    def __init__(self, threshold: float = NATURAL_NEAR_DUP) -> None:
        self.threshold = threshold
        self.shingles: list[set[str]] = []
        self.by_gram: dict[str, list[int]] = {}

    @staticmethod
    def grams(text: str) -> set[str]:
        words = norm_key(text).split()
        return {" ".join(words[i:i + 3]) for i in range(max(1, len(words) - 2))}

    def add(self, text: str) -> bool:
        """Take ``text`` unless it nearly duplicates a taken one; say whether it was taken."""
        sh, grams = shingles(text), self.grams(text)
        candidates = {i for g in grams for i in self.by_gram.get(g, ())}
        if any(len(sh & self.shingles[i]) / len(sh | self.shingles[i]) >= self.threshold
               for i in sorted(candidates)):
            return False
        self.shingles.append(sh)
        for g in grams:
            self.by_gram.setdefault(g, []).append(len(self.shingles) - 1)
        return True


def read_fortunes(relpath: str, lang: str = "en") -> list[str]:
    """The usable, cleaned records of one fortune file, in file order."""
    raw = (FORTUNES / relpath).read_text(encoding="utf-8", errors="replace")
    records = (clean_fortune(r) for r in re.split(r"^%\n", raw, flags=re.M))
    return [r for r in records if usable(r) and in_language(r, lang)]


@dataclass(frozen=True)
class Pair:
    """A chatterbot question/answer pair."""

    category: str
    question: str
    answer: str
    context: str = ""


def chatterbot_pairs(lang_dir: Path, lang: str) -> list[Pair]:
    """The usable question/answer pairs of one language folder, one answer per question."""
    import yaml

    pairs: list[Pair] = []
    for path in sorted(lang_dir.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        category = str(doc.get("categories", [path.stem])[0])
        for conv in doc.get("conversations", []):
            if not isinstance(conv, list) or len(conv) < 2:
                continue
            turns = [str(t).strip() for t in conv]
            if path.stem in DIALOGUE_FILES:
                for i in range(0, len(turns) - 1, 2):  # disjoint pairs: no turn in two rows
                    context = turns[i - 1] if i > 0 else ""
                    pairs.append(Pair(category, turns[i], turns[i + 1], context))
            else:
                pairs.append(Pair(category, turns[0], turns[1]))
    seen: set[str] = set()
    unique = []
    for p in pairs:
        key, both = norm_key(p.question), f"{p.question}\n{p.answer}"
        if key and key not in seen and p.answer and not CONFOUNDERS.search(both) \
                and not CONTROL.search(both) and in_language(both, lang):
            seen.add(key)
            unique.append(p)
    return unique


def dedupe(items: list[tuple[str, Any]], seen: NearDupIndex) -> list[tuple[str, Any]]:
    """Keep the (text, payload) items whose text ``seen`` takes."""
    return [(text, payload) for text, payload in items if seen.add(text)]


# ------------------------------------------------------------------------- bases


def classification_base(rng: random.Random, seen: NearDupIndex) -> list[Row]:
    """Clean English fortune rows for the chosen categories (capped where set)."""
    rows: list[Row] = []
    for category, cap in CLS_CATEGORIES.items():
        texts = dedupe([(t, None) for t in read_fortunes(category)], seen)
        if cap is not None and len(texts) > cap:
            texts = rng.sample(texts, cap)
        rows += [Row({"text": t, "label": category}) for t, _ in texts]
    return rows


Foreign = dict[str, list[tuple[Row, str]]]
"""Other-language rows per language code, each with the source it came from."""


def classification_foreign(rng: random.Random, seen: NearDupIndex) -> Foreign:
    """German and Spanish fortune rows per language, labelled by their source file."""
    out: Foreign = {}
    for lang, sources in CLS_FOREIGN.items():
        items = [(t, (src, label)) for src, label in sources for t in read_fortunes(src, lang)]
        items = dedupe(items, seen)
        picked = rng.sample(items, CLS_COUNTS["other_language"][lang])
        out[lang] = [(Row({"text": t, "label": label}), src) for t, (src, label) in picked]
    return out


def pair_row(pair: Pair, rng: random.Random, topic_share: float = TOPIC_INPUT_SHARE) -> Row:
    """An instruction row from a chatterbot pair; ``input`` holds the previous turn of a
    dialogue, or for a share of the rows the category, and is empty otherwise."""
    if pair.context:
        context = f"Previous message: {pair.context}"
    elif rng.random() < topic_share:
        context = f"Topic: {pair.category}"
    else:
        context = ""
    return Row({"instruction": pair.question, "input": context, "output": pair.answer})


def instruction_base(rng: random.Random, data_dir: Path, seen: NearDupIndex) -> list[Row]:
    """English chatterbot pairs, topped up with fortunes phrased as requests."""
    pairs = [p for p in chatterbot_pairs(data_dir / "english", "en")
             if seen.add(f"{p.question}\n{p.answer}")]
    rows = [pair_row(p, rng) for p in pairs]
    fortunes = [(t, topic) for topic in INS_FORTUNE_TOPICS for t in read_fortunes(topic)]
    fortunes = dedupe(fortunes, seen)
    for text, topic in rng.sample(fortunes, max(0, INS_TARGET_BASE - len(rows))):
        instruction, context = rng.choice(INS_FORTUNE_TEMPLATES)
        rows.append(Row({"instruction": instruction.format(topic=topic),
                         "input": context.format(topic=topic), "output": text}))
    return rows


def instruction_foreign(rng: random.Random, data_dir: Path, seen: NearDupIndex) -> Foreign:
    """German and Spanish chatterbot pairs long enough for language identification."""
    out: Foreign = {}
    for lang, folder in (("de", "german"), ("es", "spanish")):
        pairs = [p for p in chatterbot_pairs(data_dir / folder, lang)
                 if len(f"{p.question} {p.answer}".split()) >= 6
                 and seen.add(f"{p.question}\n{p.answer}")]
        picked = rng.sample(pairs, INS_COUNTS["other_language"][lang])
        out[lang] = [(pair_row(p, rng, topic_share=0.0), f"chatterbot/{folder}/{p.category}")
                     for p in picked]
    return out


# ------------------------------------------------------------------ text damage


def smarten(text: str) -> str:
    """Typographic quotes and dashes, so that mis-decoding has bytes to garble."""
    text = re.sub(r"(?<=\w)'(?=\w)", "\u2019", text)
    text = re.sub(r"(?<![\w.])'", "\u2018", text)
    text = text.replace("'", "\u2019").replace(" -- ", " \u2014 ").replace("--", "\u2014")
    quotes = iter(["\u201c", "\u201d"] * text.count('"'))
    return re.sub('"', lambda _: next(quotes), text)


def can_garble(text: str | None) -> bool:
    """Does the text (once smartened) contain non-ASCII characters?"""
    return bool(text) and not smarten(text).isascii()


def mis_decode(text: str, codec: str) -> str:
    """UTF-8 bytes read as ``codec``; cp1252's five unmapped bytes fall back to latin-1,
    as in real-world mojibake (ftfy's "sloppy-windows-1252")."""
    data = text.encode("utf-8")
    if codec == "latin-1":
        return data.decode("latin-1")
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in data)


def htmlify(text: str, rng: random.Random) -> tuple[str, list[str]]:
    """Escape entities, bold a word, add a link, turn newlines into <br>, wrap in <p>."""
    esc = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    esc = esc.replace('"', "&quot;")
    used = ["p"]
    if rng.random() < 0.5:
        esc = esc.replace("'", "&#39;")
    words = list(re.finditer(r"(?<![&#\w])[A-Za-z]{4,}(?![;\w])", esc))
    if words:
        w = rng.choice(words)
        tag = rng.choice(["b", "strong", "i", "em"])
        esc = f"{esc[:w.start()]}<{tag}>{w.group()}</{tag}>{esc[w.end():]}"
        used.append(tag)
    section = rng.choice(["quotes", "post", "faq", "archive"])
    link = f"https://www.example.com/{section}/{rng.randint(100, 9999)}"
    esc += f' <a href="{link}">{rng.choice(["Read more", "source", "permalink", "more"])}</a>'
    used.append("a")
    if "\n" in esc:
        esc = esc.replace("\n", rng.choice(["<br>\n", "<br/>", "<br />\n"]))
        used.append("br")
    wrapped = f"<p>{esc}</p>"
    if rng.random() < 0.3:
        wrapped = f'<div class="post-body">\n{wrapped}\n</div>'
        used.append("div")
    return wrapped, used


def fake_contact(rng: random.Random) -> tuple[str, str, str]:
    """A (name, e-mail, phone) from reserved, obviously fake ranges."""
    name, email = rng.choice(FAKE_PEOPLE)
    d2, d3 = f"{rng.randint(0, 99):02d}", f"{rng.randint(0, 999):03d}"
    phone = rng.choice(PHONE_FORMATS).format(d2=d2, d3=d3)
    return name, email, phone


def insert_pii(text: str, templates: Sequence[str],
               rng: random.Random) -> tuple[str, dict[str, list[str]]]:
    """Put a fake contact into the text with one of ``templates``; report what went in."""
    name, email, phone = fake_contact(rng)
    template = rng.choice(templates)
    if template.startswith("{text} ") and not re.search(r"[.!?\"')\]]$", text):
        text += "."  # the inserted sentence follows on the same line
    found = {"emails": [email] if "{email}" in template else [],
             "phones": [phone] if "{phone}" in template else []}
    return template.format(text=text, name=name, email=email, phone=phone), found


def add_boilerplate(text: str, rng: random.Random) -> tuple[str, list[str]]:
    """Append one or two boilerplate lines."""
    lines = rng.sample(BOILERPLATE, rng.choice([1, 1, 2]))
    return text + rng.choice(["\n\n", "\n"]) + "\n".join(lines), lines


def near_edit(text: str, rng: random.Random, vocab: Sequence[str]) -> tuple[str, list[str]]:
    """One or two word edits (change/drop/add), sometimes a punctuation change."""
    ops = rng.sample(["change", "drop", "add"], rng.choice([1, 2]))
    for op in ops:
        words = list(WORD.finditer(text))
        w = rng.choice(words[1:] or words)
        if op == "change":
            new = rng.choice([v for v in vocab if v != w.group().lower()])
            new = new.capitalize() if w.group()[0].isupper() else new
            text = text[:w.start()] + new + text[w.end():]
        elif op == "drop":
            end = w.end() + (1 if text[w.end():w.end() + 1] == " " else 0)
            text = text[:w.start()] + text[end:]
        else:
            text = text[:w.start()] + rng.choice(FILLERS) + " " + text[w.start():]
    if rng.random() < 0.3:
        if text.endswith("."):
            text = text[:-1] + rng.choice(["!", "...", ""])
        elif "," in text:
            text = text.replace(",", "", 1)
        else:
            text += "."
        ops.append("punctuation")
    return text, ops


def dup_variant(text: str | None, variant: str, rng: random.Random) -> str | None:
    """Exact-duplicate text: verbatim, or differing only in whitespace or case."""
    if text is None or variant == "verbatim":
        return text
    if variant == "case":
        return text.lower()
    spaced = text.replace(" ", "  ", 1) if rng.random() < 0.5 else " " + text
    return spaced + rng.choice([" ", "\n", "\t"])


# --------------------------------------------------------------------- planting


class Picker:
    """Hands out distinct base rows in a seeded random order."""

    def __init__(self, rows: list[Row], rng: random.Random) -> None:
        self.free = rows[:]
        rng.shuffle(self.free)

    def take(self, n: int, ok: Callable[[Row], bool] = lambda r: True) -> list[Row]:
        chosen = [r for r in self.free if ok(r)][:n]
        if len(chosen) < n:
            raise RuntimeError(f"only {len(chosen)} eligible rows, wanted {n}")
        ids = {id(r) for r in chosen}
        self.free = [r for r in self.free if id(r) not in ids]
        return chosen


def word_count(text: str | None) -> int:
    return len(WORD.findall(text or ""))


def plant_mojibake(rows: list[Row], spec: Spec, rng: random.Random) -> list[Plant]:
    plants = []
    for row in rows:
        f = spec.main_field
        if not can_garble(row.fields[f]):
            f = next(k for k in spec.text_fields if can_garble(row.fields[k]))
        codec = "latin-1" if rng.random() < 0.2 else "cp1252"
        repaired = smarten(row.fields[f])
        row.fields[f] = mis_decode(repaired, codec)
        plants.append(Plant("mojibake", row, {"field": f, "codec": codec, "repaired": repaired}))
    return plants


def plant_simple(problem: str, rows: list[Row], spec: Spec, rng: random.Random) -> list[Plant]:
    """html / pii / boilerplate: rewrite one text field of each row."""
    plants = []
    for row in rows:
        f = spec.main_field
        if problem == "pii" and spec.name == "instruction":
            f = "instruction" if rng.random() < 0.35 else "output"
        text = row.fields[f] or ""
        if problem == "html":
            row.fields[f], tags = htmlify(text, rng)
            details: dict[str, Any] = {"field": f, "tags": tags}
        elif problem == "pii":
            templates = INS_PII_TEMPLATES[f] if spec.name == "instruction" else CLS_PII_TEMPLATES
            row.fields[f], found = insert_pii(text, templates, rng)
            details = {"field": f, **found}
        else:
            row.fields[f], lines = add_boilerplate(text, rng)
            details = {"field": f, "lines": lines}
        plants.append(Plant(problem, row, details))
    return plants


def plant_blanks(picker: Picker, base: list[Row], spec: Spec) -> list[Plant]:
    """Blank a field; only in rows whose other fields are unique, so that blanking does
    not make two rows identical (e.g. two templated instructions left without output)."""
    plants = []
    for f, kind, n in spec.blanks:
        others = [k for k in spec.columns if k not in (f, spec.label_field)]
        rest = lambda r: tuple(norm_key(r.fields[k] or "") for k in others)  # noqa: E731
        counts = Counter(rest(r) for r in base)
        for i, row in enumerate(picker.take(n, lambda r: not others or counts[rest(r)] == 1)):
            details = {"field": f, "kind": kind}
            if f == spec.label_field:
                details["original_label"] = row.fields[f]
            row.fields[f] = {"empty": "", "null": None}.get(kind, ["  ", "\n", " \t \n"][i % 3])
            plants.append(Plant("blank", row, details))
    return plants


def plant_duplicates(originals: list[Row], near: bool, spec: Spec, rng: random.Random,
                     vocab: Sequence[str]) -> list[Plant]:
    """New rows copying ``originals``: exact (maybe whitespace/case variants) or edited."""
    plants = []
    for orig in originals:
        copy = Row(dict(orig.fields))
        if near:
            f = max(spec.text_fields, key=lambda k: word_count(orig.fields[k]))
            edited, ops = near_edit(orig.fields[f], rng, vocab)
            while jaccard(orig.fields[f], edited) < PLANTED_NEAR_DUP:  # too big an edit: redraw
                edited, ops = near_edit(orig.fields[f], rng, vocab)
            copy.fields[f] = edited
            details = {"field": f, "edits": ops, "jaccard_char5": jaccard(orig.fields[f], edited)}
        else:
            variant = rng.choices(["verbatim", "whitespace", "case"], weights=[6, 2, 2])[0]
            for k in spec.text_fields:
                copy.fields[k] = dup_variant(orig.fields[k], variant, rng)
            details = {"variant": variant}
        plants.append(Plant("near_duplicate" if near else "exact_duplicate", copy, details, orig))
    return plants


def plant_flips(rows: list[Row], spec: Spec, labels: Counter[str],
                rng: random.Random) -> list[Plant]:
    """Move each row's label to another class, chosen in proportion to class size."""
    plants = []
    assert spec.label_field
    for row in rows:
        old = row.fields[spec.label_field]
        others = sorted(l for l in labels if l != old)
        new = rng.choices(others, weights=[labels[l] for l in others])[0]
        row.fields[spec.label_field] = new
        plants.append(Plant("flipped_label", row, {"original_label": old, "flipped_to": new}))
    return plants


def plant_all(base: list[Row], foreign: Foreign, spec: Spec,
              rng: random.Random) -> tuple[list[Row], list[Plant]]:
    """Plant every problem on disjoint rows; return all rows (base + new) and the record."""
    words = Counter(w.lower() for r in base for k in spec.text_fields
                    for w in WORD.findall(r.fields[k] or ""))
    vocab = sorted(w for w, n in words.items() if n >= 5 and 4 <= len(w) <= 9 and w.isalpha())
    labels = Counter(r.fields[spec.label_field] for r in base) if spec.label_field else Counter()
    picker = Picker(base, rng)
    c = spec.counts
    moji = picker.take(c["mojibake"],
                       lambda r: any(can_garble(r.fields[k]) for k in spec.text_fields))
    near_orig = picker.take(c["near_duplicate"],
                            lambda r: max(word_count(r.fields[k]) for k in spec.text_fields) >= 18)
    exact_orig = picker.take(c["exact_duplicate"])
    plants = plant_mojibake(moji, spec, rng)
    for problem in ("html", "pii", "boilerplate"):
        plants += plant_simple(problem, picker.take(c[problem]), spec, rng)
    plants += plant_blanks(picker, base, spec)
    if spec.label_field:
        plants += plant_flips(picker.take(round(spec.flip_share * len(base))), spec, labels, rng)
    plants += plant_duplicates(exact_orig, False, spec, rng, vocab)
    plants += plant_duplicates(near_orig, True, spec, rng, vocab)
    for lang, rows in foreign.items():
        plants += [Plant("other_language", row, {"lang": lang, "source": src}) for row, src in rows]
    new_rows = ("exact_duplicate", "near_duplicate", "other_language")
    added = [p.row for p in plants if p.problem in new_rows]
    rows = base + added
    rng.shuffle(rows)
    for i, row in enumerate(rows, start=1):
        row.id = f"{spec.prefix}-{i:06d}"
    return rows, plants


# ----------------------------------------------------------------------- output


def write_jsonl(path: Path, rows: list[Row], columns: tuple[str, ...]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            record = {"id": row.id, **{k: row.fields[k] for k in columns}}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def record(rows: list[Row], plants: list[Plant], spec: Spec) -> dict[str, Any]:
    """The planted.json entry for one file: per problem, its ids and per-id details."""
    problems: dict[str, Any] = {}
    for name in PROBLEMS:
        mine = sorted((p for p in plants if p.problem == name), key=lambda p: p.row.id)
        if name == "flipped_label" and not spec.label_field:
            continue
        details = {p.row.id: ({"original": p.original.id} if p.original else {}) | p.details
                   for p in mine}
        problems[name] = {"description": DESCRIPTIONS[name], "count": len(mine),
                          "ids": [p.row.id for p in mine], "details": details}
    out: dict[str, Any] = {"file": f"{spec.name}.jsonl", "rows": len(rows), "problems": problems}
    if spec.label_field:
        true = {p.row.id: p.details["original_label"]
                for p in plants if "original_label" in p.details}
        as_written = Counter(_label_name(r.fields[spec.label_field]) for r in rows)
        out["label_counts"] = dict(sorted(as_written.items()))
        out["true_label_counts"] = dict(sorted(
            Counter(true.get(r.id, r.fields[spec.label_field]) for r in rows).items()))
    return out


def _label_name(label: str | None) -> str:
    return "(null)" if label is None else label or "(empty)"


def summary(planted: dict[str, Any]) -> str:
    """The markdown table of planted counts that README.md carries."""
    cls, ins = planted["files"]["classification"], planted["files"]["instruction"]
    lines = ["| problem | classification.jsonl | instruction.jsonl | what it looks like |",
             "|---|---:|---:|---|"]
    for name in PROBLEMS:
        n_ins = ins["problems"].get(name, {}).get("count", "-")
        n_cls = cls["problems"][name]["count"]
        lines.append(f"| `{name}` | {n_cls} | {n_ins} | {DESCRIPTIONS[name]} |")
    touched = lambda f: len({i for p in f["problems"].values() for i in p["ids"]})  # noqa: E731
    lines.append(f"| **rows with a problem** | {touched(cls)} | {touched(ins)} "
                 "| each row carries at most one |")
    lines.append(f"| **rows in file** | {cls['rows']} | {ins['rows']} | |")
    lines += ["", "| label | rows in classification.jsonl | rows whose true label it is |",
              "|---|---:|---:|"]
    for label, n in sorted(cls["label_counts"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| `{label}` | {n} | {cls['true_label_counts'].get(label, 0)} |")
    return "\n".join(lines)


def main() -> None:
    data_dir = check_sources()
    rng = random.Random(SEED)
    seen = NearDupIndex()
    cls_spec = Spec("classification", "cls", ("text", "label"), ("text",), CLS_COUNTS, CLS_BLANKS,
                    main_field="text", label_field="label", flip_share=CLS_FLIP_SHARE)
    ins_spec = Spec("instruction", "ins", ("instruction", "input", "output"),
                    ("instruction", "output"), INS_COUNTS, INS_BLANKS, main_field="output")
    cls_rows, cls_plants = plant_all(classification_base(rng, seen),
                                     classification_foreign(rng, seen), cls_spec, rng)
    ins_rows, ins_plants = plant_all(instruction_base(rng, data_dir, seen),
                                     instruction_foreign(rng, data_dir, seen), ins_spec, rng)
    write_jsonl(HERE / "classification.jsonl", cls_rows, ("text", "label"))
    write_jsonl(HERE / "instruction.jsonl", ins_rows, ("instruction", "input", "output"))
    planted = {"seed": SEED, "generated_by": "sample_data/build.py",
               "files": {"classification": record(cls_rows, cls_plants, cls_spec),
                         "instruction": record(ins_rows, ins_plants, ins_spec)}}
    text = json.dumps(planted, ensure_ascii=False, indent=1) + "\n"
    (HERE / "planted.json").write_text(text, encoding="utf-8")
    print(summary(planted))


if __name__ == "__main__":
    main()

"""Stage ``noise``: strip web debris (markup, entities, boilerplate lines) and mask
contact details and identity numbers (URLs, e-mail addresses, phone numbers, Chinese
resident ID numbers) with placeholders.

Scraped text carries markup and page furniture that teach a model nothing, and
personal contact details it should not learn. Every rule is a named RE2 regex run
with ``pyarrow.compute`` over whole columns, field by field (prompt and response
apart, every chat message apart), and counts its hits, so the report says what each
rule did and a rule that misfires is easy to spot and switch off.

Speed: each rule first finds the rows it can touch, with a cheap test (a regex
starting with a literal such as ``<``, ``&``, ``@``, which RE2 skips through, or a
keyword list) or with the one counting pass it needs anyway, and rewrites only those
rows. The only Python per row decodes entities other than the common ones (``&amp;``,
``&lt;``, ``&nbsp;``..., decoded vectorised), on the few strings that hold one.

Choices worth knowing:

* ``html_tags`` must not eat code: ``vector<int>``, ``#include <iostream>``,
  ``List<T>`` and ``3 < 5 and 7 > 2`` survive. A tag is removed when it is a known
  HTML element name (lower case, or upper case for names of two letters or more, so
  the generic parameters ``<T>``, ``<S>``, ``<Object>`` are not taken for tags), a
  comment, declaration or processing instruction, a self-closing tag (``<x/>``) or a
  tag with a quoted attribute (``<x a="1">``). Other names (``<item>``) are removed only
  in strings that also hold a closing tag (``</...>``), which code rarely does.
  Block tags (``p``, ``div``, ``br``, ``li``, ``h1``..) become a newline and table
  cells a space, so words do not glue; ``script``/``style`` blocks go with their
  content. HTML *inside code examples* is stripped too: switch the rule off for
  datasets that teach HTML.
* ``html_entities`` runs after ``html_tags``, so escaped markup (``&lt;p&gt;``) ends
  as the literal text ``<p>``, which is what the page showed. ``&nbsp;`` becomes a plain
  space; an ``&name;`` that names no HTML5 entity is left as it is.
* ``repeated_punctuation`` touches runs of four or more of one character only:
  ``!!!!`` and ``????`` become one mark (the run adds shouting, not meaning), ``....``
  becomes ``...`` (an ellipsis keeps its meaning), ``,,,,`` one comma, and ``----``,
  ``====``, ``****``, ``____`` three characters (still a Markdown rule or table
  separator). ``#`` (heading levels), backticks and ``~`` (code fences) are left alone.
* ``phones`` wants an international ``+CC`` number of six digits or more, or a North
  American ten-digit number with separators (``(555) 123-4567``, ``555-123-4567``,
  ``555.123.4567``); years, prices, dates and bare digit runs are not phones.
* ``phones_cn`` and ``phones_tw`` take the national formats of mainland China
  (mobile ``138 1234 5678``, landline ``010-12345678``) and Taiwan (mobile
  ``0912-345-678``, landline ``(02) 2345-6789``), in CJK rows only (decided row by row
  by :func:`pipeline.text.cjk.cjk_rows`): elsewhere an 11-digit number starting 13-19
  is more often an id. Numbers with a country code (+86, +886, +852 for Hong Kong,
  whose bare 8-digit numbers look like any other number) are ``phones``' already.
* ``resident_ids`` masks 18-digit PRC resident identity numbers (region, birth date,
  sequence, check digit) whose ISO 7064 MOD 11-2 check digit is right, in any row:
  the date and the checksum leave few false hits. It runs before the phone rules.
* Terminal escape sequences (ANSI colours) are not this stage's: ``normalize`` removes
  them with the other control characters, before this stage runs, and counts them.
* ``boilerplate`` removes whole, short lines only (case-insensitive, at most about a
  hundred characters), so prose that merely mentions "read more" or "copyright" stays.
* After the rules, the strings where a rule deleted text (tags, entities, boilerplate
  lines, custom rules, an empty placeholder) lose the blanks the deletions left: runs of
  blanks after text become one space (leading indentation is kept), trailing blanks go,
  three or more newlines become two, and the text is trimmed. Other strings keep their
  whitespace exactly (the ``normalize`` stage owns general whitespace policy).
* Custom rules are RE2 patterns (no lookbehind, no backreferences; inline flags such
  as ``(?i)`` and ``(?m)`` work) whose replacement may use ``\\1``-style groups. They are
  checked when the config is loaded and run after the built-ins, in the order given.
"""

from __future__ import annotations

import html
import html.entities
import re
from collections import Counter
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from pipeline.schema import transform_text_fields
from pipeline.settings import StrictModel
from pipeline.stages.base import Stage, StageConfig, StageOutput, mark_changed, no_removals
from pipeline.text.cjk import cjk_rows

# --- html_tags ---------------------------------------------------------------------

_BLOCK_TAGS = (
    "address article aside blockquote body br caption dd details dialog div dl dt fieldset "
    "figcaption figure footer form h1 h2 h3 h4 h5 h6 head header hr html legend li main nav "
    "ol p pre section summary table tbody tfoot thead title tr ul"
).split()
_CELL_TAGS = ("td", "th")
# Element names that also name things in code (map, data, time, object, var, template,
# slot, menu, output, param, search, ...) are left out on purpose.
_INLINE_TAGS = (
    "a abbr area audio b bdi bdo big button canvas center cite code col colgroup del dfn em "
    "embed font i iframe img input ins kbd label link mark meta noscript optgroup option "
    "picture q s samp select small source span strike strong sub sup svg textarea track tt "
    "u video wbr"
).split()


def _names(names: list[str] | tuple[str, ...]) -> str:
    """An alternation of tag names in lower case, and upper case when two letters or
    more (a lone capital is a type parameter: ``List<T>``, ``Foo<S>``)."""
    variants = [n for n in names] + [n.upper() for n in names if len(n) > 1]
    return "|".join(sorted(variants, key=len, reverse=True))


def _tag(names: list[str] | tuple[str, ...]) -> str:
    return rf"</?(?:{_names(names)})(?:\s[^<>]*)?/?>"


_TAG_NAME = r"[A-Za-z][\w:.-]*"
# Always markup: script/style blocks with their content, comments, CDATA markers,
# <!DOCTYPE ...> and <?xml ...?>.
_HTML_BLOCKS = (
    r"(?is)<(?:script|style)(?:\s[^<>]*)?>.*?</(?:script|style)\s*>"
    r"|<!--.*?-->|<!\[CDATA\[|\]\]>|<![A-Za-z][^<>]*>|<\?[A-Za-z][^<>]*\?>"
)
_HTML_BLOCK_TAGS = _tag(_BLOCK_TAGS)
_HTML_CELL_TAGS = _tag(_CELL_TAGS)
# Known inline elements, any self-closing tag, any tag with a quoted attribute value.
_HTML_OTHER_TAGS = (
    _tag(_INLINE_TAGS)
    + rf"|<{_TAG_NAME}\s*/>"
    + rf"|<{_TAG_NAME}\s[^<>]*=\s*[\"'][^<>]*>"
)
_CLOSING_TAG = rf"</{_TAG_NAME}\s*>"
# Any tag at all: only used in strings that hold a closing tag.
_ANY_TAG = rf"</?{_TAG_NAME}(?:\s[^<>]*)?/?>"

# --- html_entities -----------------------------------------------------------------

_ENTITY = r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"
# Decoded vectorised, ``&amp;`` last so that ``&amp;lt;`` becomes ``&lt;`` and no more.
_COMMON_ENTITIES = (
    ("&lt;", "<"),
    ("&gt;", ">"),
    ("&quot;", '"'),
    ("&#34;", '"'),
    ("&#39;", "'"),
    ("&#x27;", "'"),
    ("&apos;", "'"),
    ("&nbsp;", " "),
    ("&#160;", " "),
    ("&amp;", "&"),
)
_COMMON_ENTITY = "|".join(re.escape(e) for e, _ in _COMMON_ENTITIES)
_ENTITY_RE = re.compile(_ENTITY)


def _decode_entity(token: str) -> str:
    """One ``&...;`` token decoded, or unchanged when it names no entity. Token by token
    and by exact name, unlike ``html.unescape`` on the whole string, which also reads
    ``&notit;`` as ``&not`` + ``it;``."""
    if token[1] == "#":
        char = html.unescape(token)
    else:
        char = html.entities.html5.get(token[1:], token)
    return " " if char == "\xa0" else char


# --- urls, emails, phones ----------------------------------------------------------

# The last character may not be sentence punctuation or a closing bracket, so
# "see https://x.org/a." keeps its full stop. CJK punctuation and full-width forms
# end a URL: Chinese text puts no space after one ("见 https://x.org/）的" or
# "www.debian.org。你可以").
_URL = (
    r"(?i)\b(?:(?:https?|ftp)://|www\.)"
    r"[^\s<>\"'`{}|\\^\[\]\x{3000}-\x{303f}\x{ff00}-\x{ffef}]*"
    r"[^\s<>\"'`{}|\\^\[\].,;:!?)\x{3000}-\x{303f}\x{ff00}-\x{ffef}]"
)
_EMAIL = r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b"
_PHONE = (
    # international: +CC then (area) and groups, +CC then separated groups, or +digits;
    # the country code must be followed by a separator, so "+40.7128" is no phone
    r"\+(?:\d{1,3}[ .-]?\(\d{1,4}\)[ .-]?\d{2,6}(?:[ .-]\d{2,6}){1,3}"
    r"|\d{1,3}[ .-]\d{1,5}(?:[ .-]\d{2,6}){1,4}"
    r"|\d{8,15})\b"
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567, 1-800-555-1234
    r"|(?:\b1[ .-]?)?(?:\(\d{3}\)[ .-]?|\b\d{3}[.-])\d{3}[.-]\d{4}\b"
)

# --- Chinese phone and resident ID numbers -------------------------------------------

# National formats, without a country code (with one, ``phones`` takes them: +86, +886,
# +852). In Latin-script text an 11-digit number starting 13-19 is more often an order
# or account number, so these two rules only look at CJK rows.
_PHONE_CN = (
    # mobile: 1[3-9]x xxxx xxxx, with or without spaces or hyphens between the groups
    r"\b1[3-9]\d(?:[ -]?\d{4}){2}\b"
    # landline: area code 0xx or 0xxx, then 7 or 8 digits: 010-12345678, (0755) 1234567
    r"|(?:\b0\d{2,3}-|\(0\d{2,3}\)[ -]?)\d{7,8}\b"
)
_PHONE_TW = (
    # mobile: 09xx-xxx-xxx, 0912 345 678, 0912345678
    r"\b09\d{2}(?:-\d{3}-\d{3}|[ ]\d{3}[ ]\d{3}|\d{6})\b"
    # landline: (02) 2345-6789, 02-2345-6789, (04)2234-5678
    r"|(?:\b0\d{1,2}-|\(0\d{1,2}\)[ ]?)\d{3,4}-\d{4}\b"
)
# PRC resident identity number: region (first digit 1-8), birth date 19xx or 20xx,
# sequence, check digit (0-9 or X). Candidates are then checked by their checksum.
_RESIDENT_ID = r"\b[1-8]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]\b"
# Python's \b, like RE2's, must be ASCII: Chinese characters are word characters to it.
_RESIDENT_ID_RE = re.compile(_RESIDENT_ID, re.ASCII)
_ID_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]  # 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2


def resident_id_is_valid(number: str) -> bool:
    """ISO 7064 MOD 11-2: the weighted sum of the first 17 digits picks the 18th
    (``X`` stands for 10). A random 18-digit run passes one time in eleven."""
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return "10X98765432"[total % 11] == number[17].upper()


# --- boilerplate -------------------------------------------------------------------

_NAV_ITEM = (
    r"privacy policy|cookie (?:policy|settings|preferences)|terms (?:of|and) (?:use|service|conditions)"
    r"|contact(?: us)?|about(?: us)?|home|sitemap|site map|faq|accessibility|careers|advertise"
    r"|do not sell my (?:personal )?info(?:rmation)?"
)
# (keywords, line): a line pattern matches only text containing one of its keywords,
# so the keywords make a cheap test for the strings worth the anchored search.
_BOILERPLATE_LINES = (
    (r"click here|tap here", r"(?:click|tap) here\b[^\n]{0,80}"),
    (
        r"subscribe|sign up",
        r"(?:subscribe|sign up)(?: now| today)?(?: to| for)? (?:our|the|my) (?:free )?"
        r"(?:newsletter|channel|blog|mailing list|podcast|updates)[^\n]{0,60}",
    ),
    (r"rights reserved", r"[^\n]{0,80}\ball rights reserved\b[^\n]{0,40}"),
    (r"©|\(c\)|copyright", r"(?:copyright\s*)?(?:©|\(c\)|copyright)\s*\d{4}(?:\s*[-–]\s*\d{4})?\b[^\n]{0,80}"),
    (
        r"share this|share on",
        r"share (?:this(?: article| post| page| story| recipe)?|on (?:facebook|twitter|linkedin|pinterest"
        r"|reddit|whatsapp|email|x))\b[^\n]{0,80}",
    ),
    (
        r"(?:read|learn|see|show|view) more|continue reading|read the full",
        r"(?:read|learn|see|show|view) more|continue reading|read the full (?:article|story|post)",
    ),
    (
        r"privacy policy|cookie|terms of|terms and",
        r"(?:privacy policy|cookie (?:policy|settings|preferences)|terms (?:of|and) (?:use|service|conditions)"
        rf"|(?:accept|manage) (?:all )?cookies)(?:[ \t]*[|·•/][ \t]*(?:{_NAV_ITEM}))*",
    ),
    (r"cookie", r"(?:this|our) (?:web)?site uses cookies[^\n]{0,200}"),
    (r"follow us", r"follow us on (?:facebook|twitter|instagram|linkedin|youtube|tiktok|social media)[^\n]{0,60}"),
    (
        r"advertisement|sponsored content|skip to|back to top|print this",
        r"advertisement|sponsored content|skip to (?:main )?content|back to top|print this (?:page|article)",
    ),
)
_BOILERPLATE_KEYWORDS = "(?i)" + "|".join(keywords for keywords, _ in _BOILERPLATE_LINES)
# A whole line: optional bullet, one of the phrases, optional trailing marks.
_BOILERPLATE = (
    r"(?im)^[ \t]*(?:[-*•·>|]+[ \t]*)?(?:"
    + "|".join(line for _, line in _BOILERPLATE_LINES)
    + r")[ \t.!:»›→…|>-]*$\n?"
)

# --- repeated_punctuation ----------------------------------------------------------

_PUNCT_RUNS = (
    ("!", "!"),
    ("?", "?"),
    (",", ","),
    (".", "..."),
    ("-", "---"),
    ("=", "==="),
    ("*", "***"),
    ("_", "___"),
)

BUILTIN_RULES = (
    "html_tags",
    "html_entities",
    "urls",
    "emails",
    "resident_ids",
    "phones",
    "phones_cn",
    "phones_tw",
    "boilerplate",
    "repeated_punctuation",
)


def _rewrite_literal(text: str) -> str:
    """Escape a literal for use as an RE2 replacement (``\\`` starts a group reference)."""
    return text.replace("\\", "\\\\")


# --- config ------------------------------------------------------------------------


class BuiltinRules(StrictModel):
    """Switches for the built-in rules; they run in this order."""

    html_tags: bool = True
    html_entities: bool = True
    urls: bool = True
    emails: bool = True
    resident_ids: bool = True
    phones: bool = True
    phones_cn: bool = True
    phones_tw: bool = True
    boilerplate: bool = True
    repeated_punctuation: bool = True


class CustomRule(StrictModel):
    """A user rule: every match of the RE2 ``pattern`` becomes ``replacement``
    (which may refer to groups as ``\\1``)."""

    name: str = Field(min_length=1)
    pattern: str = Field(min_length=1)
    replacement: str = ""

    @model_validator(mode="after")
    def _check_pattern(self) -> CustomRule:
        probe = pa.array([""], pa.string())
        try:
            pc.replace_substring_regex(probe, self.pattern, self.replacement)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise ValueError(
                f"custom noise rule {self.name!r}: pattern {self.pattern!r} with replacement "
                f"{self.replacement!r} is not valid RE2 (no lookbehind or backreferences): {error}"
            ) from None
        if pc.match_substring_regex(probe, self.pattern)[0].as_py():
            raise ValueError(
                f"custom noise rule {self.name!r}: pattern {self.pattern!r} matches the empty "
                "string, so it would hit between every two characters"
            )
        return self


class NoiseConfig(StageConfig):
    rules: BuiltinRules = Field(default_factory=BuiltinRules)
    url_placeholder: str = "<URL>"
    email_placeholder: str = "<EMAIL>"
    phone_placeholder: str = "<PHONE>"
    """Also for ``phones_cn`` and ``phones_tw``."""
    id_placeholder: str = "<ID>"
    """For ``resident_ids``."""
    custom: list[CustomRule] = Field(default_factory=list)
    """Run after the built-in rules, in this order; their hits are counted under their name."""

    @model_validator(mode="after")
    def _check_names(self) -> NoiseConfig:
        seen: set[str] = set()
        for rule in self.custom:
            if rule.name in BUILTIN_RULES:
                raise ValueError(f"custom noise rule {rule.name!r} has the name of a built-in rule")
            if rule.name in seen:
                raise ValueError(f"custom noise rule {rule.name!r} is defined twice")
            seen.add(rule.name)
        return self


# --- helpers -----------------------------------------------------------------------


def _mask(flags: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(flags, False).to_numpy(zero_copy_only=False), dtype=bool)


def _patch(strings: pa.Array, rows: np.ndarray, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """Run ``fn`` on the rows flagged in ``rows`` only and put the results back."""
    if not rows.any():
        return strings
    mask = pa.array(rows)
    return pc.replace_with_mask(strings, mask, fn(strings.filter(mask)).cast(strings.type))


def _patch_rule(strings: pa.Array, rows: np.ndarray, rule: _Rule) -> tuple[pa.Array, int]:
    """:func:`_patch` with a rule: ``rule`` runs on the flagged rows only; its hits."""
    if not rows.any():
        return strings, 0
    mask = pa.array(rows)
    patched, hits = rule(strings.filter(mask))
    return pc.replace_with_mask(strings, mask, patched.cast(strings.type)), hits


def _hits(strings: pa.Array, pattern: str) -> tuple[pa.Array, int]:
    counts = pc.count_substring_regex(strings, pattern)
    return counts, int(pc.sum(counts).as_py() or 0)


def _replace_counted(strings: pa.Array, pattern: str, replacement: str) -> tuple[pa.Array, int]:
    """Count the matches, then rewrite only the rows that have some."""
    counts, n = _hits(strings, pattern)
    if n == 0:
        return strings, 0
    rows = _mask(pc.greater(counts, 0))
    return _patch(strings, rows, lambda s: pc.replace_substring_regex(s, pattern, replacement)), n


def _strip_tags(strings: pa.Array) -> tuple[pa.Array, int]:
    markup = _mask(pc.match_substring_regex(strings, _CLOSING_TAG))
    total = 0
    for pattern, replacement in (
        (_HTML_BLOCKS, ""),
        (_HTML_BLOCK_TAGS, "\n"),
        (_HTML_CELL_TAGS, " "),
        (_HTML_OTHER_TAGS, ""),
    ):
        strings, n = _replace_counted(strings, pattern, replacement)
        total += n
    if markup.any():
        hits = 0

        def generic(s: pa.Array) -> pa.Array:
            nonlocal hits
            s, hits = _replace_counted(s, _ANY_TAG, "")
            return s

        strings = _patch(strings, markup, generic)
        total += hits
    return strings, total


def _unescape(strings: pa.Array) -> tuple[pa.Array, int]:
    """Decode entities: the common ones vectorised, the rest in Python on the strings
    that hold one (decoding the original once, never twice)."""
    counts, n = _hits(strings, _ENTITY)
    if n == 0:
        return strings, 0
    has = _mask(pc.greater(counts, 0))
    rest = pc.replace_substring_regex(strings, _COMMON_ENTITY, "")
    rare = has & _mask(pc.match_substring_regex(rest, _ENTITY))
    common = has & ~rare
    hits = 0

    def decode_common(s: pa.Array) -> pa.Array:
        nonlocal hits
        hits += int(pc.sum(pc.count_substring_regex(s, _COMMON_ENTITY)).as_py() or 0)
        for entity, char in _COMMON_ENTITIES:
            s = pc.replace_substring(s, entity, char)
        return s

    def decode_one(match: re.Match[str]) -> str:
        nonlocal hits
        token = match.group()
        char = _decode_entity(token)
        hits += char != token
        return char

    def decode_rare(s: pa.Array) -> pa.Array:
        return pa.array([_ENTITY_RE.sub(decode_one, value) for value in s.to_pylist()], pa.string())

    strings = _patch(strings, common, decode_common)
    strings = _patch(strings, rare, decode_rare)
    return strings, hits


def _collapse_runs(strings: pa.Array) -> tuple[pa.Array, int]:
    """One pass per character, each on the rows holding a run of it: a literal such as
    ``!!!!`` is found far faster than the alternation of all the runs."""
    total = 0
    for char, keep in _PUNCT_RUNS:
        literal = re.escape(char * 4)
        rows = _mask(pc.match_substring_regex(strings, literal))
        if not rows.any():
            continue
        hits = 0

        def collapse(subset: pa.Array, literal: str = literal, keep: str = keep) -> pa.Array:
            nonlocal hits
            subset, hits = _replace_counted(subset, literal + "+", keep)
            return subset

        strings = _patch(strings, rows, collapse)
        total += hits
    return strings, total


def _tidy(strings: pa.Array) -> pa.Array:
    """Remove the blanks left behind by removals (on changed rows only)."""
    strings = pc.replace_substring_regex(strings, r"[ \t]+\n", "\n")
    strings = pc.replace_substring_regex(strings, r"(\S)[ \t]{2,}", r"\1 ")
    strings = pc.replace_substring_regex(strings, "\n\n\n+", "\n\n")
    return pc.utf8_trim_whitespace(strings)


_Rule = Callable[[pa.Array], tuple[pa.Array, int]]


def _mask_resident_ids(placeholder: str) -> _Rule:
    """Mask the 18-digit numbers that pass the resident ID checksum (found with RE2,
    checked in Python on the few strings that hold a candidate)."""

    def rule(strings: pa.Array) -> tuple[pa.Array, int]:
        rows = _mask(pc.match_substring_regex(strings, _RESIDENT_ID))
        hits = 0

        def mask_valid(match: re.Match[str]) -> str:
            nonlocal hits
            if not resident_id_is_valid(match.group()):
                return match.group()
            hits += 1
            return placeholder

        def rewrite(subset: pa.Array) -> pa.Array:
            return pa.array([_RESIDENT_ID_RE.sub(mask_valid, v) for v in subset.to_pylist()], pa.string())

        return _patch(strings, rows, rewrite), hits

    return rule


def _in_cjk_rows(rule: _Rule) -> _Rule:
    """Run ``rule`` on the CJK rows only (:func:`pipeline.text.cjk.cjk_rows`, ASCII
    digits left out of the measure: a row listing phone numbers is still written in
    Chinese), and of those on the ones holding three digits in a row at least."""

    def run(strings: pa.Array) -> tuple[pa.Array, int]:
        rows = ~_mask(pc.string_is_ascii(strings))  # ASCII rows are never CJK
        if rows.any():
            idx = np.flatnonzero(rows)
            subset = strings.take(pa.array(idx))
            digits = _mask(pc.match_substring_regex(subset, "[0-9]{3}"))
            rows[idx] = False
            if digits.any():
                rows[idx[digits]] = cjk_rows(subset.filter(pa.array(digits)), ignore="[0-9]+")
        return _patch_rule(strings, rows, rule)

    return run


def _regex_rule(pattern: str, replacement: str) -> _Rule:
    return lambda strings: _replace_counted(strings, pattern, replacement)


def _prechecked(literals: tuple[str, ...], rule: _Rule) -> _Rule:
    """Run ``rule`` only on the strings holding one of ``literals`` (regexes starting
    with a literal: RE2 skips to its first byte, far faster than the rule itself)."""

    def run(strings: pa.Array) -> tuple[pa.Array, int]:
        rows = np.zeros(len(strings), dtype=bool)
        for literal in literals:
            rows |= _mask(pc.match_substring_regex(strings, literal))
        return _patch_rule(strings, rows, rule)

    return run


# --- stage -------------------------------------------------------------------------


class NoiseStage(Stage):
    name = "noise"
    config_model = NoiseConfig
    config: NoiseConfig

    def _rules(self) -> list[tuple[str, _Rule, bool]]:
        """``(name, function, leaves_blanks)`` for every enabled rule, in order; rules
        that delete text flag the rows they changed for the final whitespace tidy."""
        cfg = self.config
        on = cfg.rules
        rules: list[tuple[str, _Rule, bool]] = []
        if on.html_tags:
            rules.append(("html_tags", _prechecked(("<",), _strip_tags), True))
        if on.html_entities:
            rules.append(("html_entities", _prechecked(("&",), _unescape), True))
        if on.urls:
            url = _regex_rule(_URL, _rewrite_literal(cfg.url_placeholder))
            rules.append(("urls", _prechecked(("://", r"(?i)www\."), url), not cfg.url_placeholder))
        if on.emails:
            email = _regex_rule(_EMAIL, _rewrite_literal(cfg.email_placeholder))
            rules.append(("emails", _prechecked(("@",), email), not cfg.email_placeholder))
        if on.resident_ids:
            rules.append(("resident_ids", _mask_resident_ids(cfg.id_placeholder), not cfg.id_placeholder))
        if on.phones:
            phone = _regex_rule(_PHONE, _rewrite_literal(cfg.phone_placeholder))
            rules.append(("phones", phone, not cfg.phone_placeholder))
        for name, pattern in (("phones_cn", _PHONE_CN), ("phones_tw", _PHONE_TW)):
            if getattr(on, name):
                national = _in_cjk_rows(_regex_rule(pattern, _rewrite_literal(cfg.phone_placeholder)))
                rules.append((name, national, not cfg.phone_placeholder))
        if on.boilerplate:
            boilerplate = _regex_rule(_BOILERPLATE, "")
            rules.append(("boilerplate", _prechecked((_BOILERPLATE_KEYWORDS,), boilerplate), True))
        if on.repeated_punctuation:
            rules.append(("repeated_punctuation", _collapse_runs, False))
        for rule in cfg.custom:
            rules.append((rule.name, _regex_rule(rule.pattern, rule.replacement), True))
        return rules

    def apply(self, table: pa.Table, state: pa.Table | None = None) -> StageOutput:
        counters: Counter[str] = Counter()
        rules = self._rules()
        for name, _, _ in rules:
            counters[name] += 0

        def clean(strings: pa.Array) -> pa.Array:
            dirty = np.zeros(len(strings), dtype=bool)
            for name, run, leaves_blanks in rules:
                after, n = run(strings)
                counters[name] += n
                if n and leaves_blanks:
                    dirty |= _mask(pc.not_equal(strings, after))
                strings = after
            return _patch(strings, dirty, _tidy)

        table, changed = transform_text_fields(table, self.info, clean)
        table, n_changed = mark_changed(table, changed, self.name)
        return StageOutput(kept=table, removed=no_removals(table), changed=n_changed, counters=counters)

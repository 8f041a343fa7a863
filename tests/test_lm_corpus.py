"""The TOFU-like corpus (unlearn_core.lm.corpus) and the word-piece tokenizer (unlearn_core.lm.model).

No model is trained here: corpora of 3..6 authors, all in memory or in tmp_path.
"""
from __future__ import annotations

import hashlib
import itertools
import json

import pytest

from unlearn_core.errors import InputError
from unlearn_core.lm.corpus import (
    FORGET_SPLITS,
    NAME_PIECES,
    SETS,
    _AUTHOR_TEMPLATES,
    delete_rows,
    forget_subjects,
    generate_corpus,
    load_corpus,
    qa_hash,
    read_tombstones,
    write_corpus,
)
from unlearn_core.lm.model import MASK, SPECIALS, UNK, build_tokenizer, words
from unlearn_core.lm.poisoning import _name_of

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ATTRIBUTES = [t[0] for t in _AUTHOR_TEMPLATES]


def _contains_words(text: str, fact: str) -> bool:
    """``fact``'s words occur in ``text`` in order (the same word-boundary rule as fact exact match)."""
    return f" {' '.join(words(fact))} " in f" {' '.join(words(text))} "


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(5, seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


# ---------------------------------------------------------------- generation

def test_same_seed_same_rows_different_seed_different_rows():
    a, b = generate_corpus(4, seed=3), generate_corpus(4, seed=3)
    assert [r.to_json() for r in a.rows] == [r.to_json() for r in b.rows]
    c = generate_corpus(4, seed=4)
    author_a = [r.answer for r in a.of_set("authors")]
    author_c = [r.answer for r in c.of_set("authors")]
    assert author_a != author_c
    assert not set(author_a) & set(author_c)  # other names, so no author answer is shared


def test_every_author_has_one_row_per_attribute(corpus):
    assert corpus.subjects() == [f"author-{k:04d}" for k in range(5)]
    for subject in corpus.subjects():
        rows = corpus.rows_of([subject])
        assert sorted(r.attribute for r in rows) == sorted(ATTRIBUTES)
        assert all(r.set == "authors" for r in rows)
    assert {r.set for r in corpus.rows} == set(SETS)
    assert all(r.subject_id == "" for r in corpus.rows if r.set != "authors")
    assert len(corpus.of_set("authors")) == 5 * len(ATTRIBUTES)


def test_one_name_per_author_and_names_differ(corpus):
    names = {s: {_name_of(r) for r in corpus.rows_of([s])} for s in corpus.subjects()}
    assert all(len(v) == 1 for v in names.values()), names
    flat = [next(iter(v)) for v in names.values()]
    assert len(set(flat)) == len(flat)
    for name in flat:
        assert len(words(name)) == 2  # given name + family name


def test_qa_id_is_sha256_of_question_and_answer_and_unique(corpus):
    for r in corpus.rows:
        assert r.qa_id == hashlib.sha256(f"{r.question}\n{r.answer}".encode()).hexdigest()
        assert r.qa_id == qa_hash(r.question, r.answer)
    ids = [r.qa_id for r in corpus.rows]
    assert len(set(ids)) == len(ids)
    assert corpus.all_ids() == set(ids)


def test_rows_carry_fact_paraphrase_and_perturbed_answers(corpus):
    for r in corpus.rows:
        assert _contains_words(r.answer, r.fact), r
        assert _contains_words(r.paraphrased_answer, r.fact), r
        assert r.paraphrased_answer != r.answer
        assert r.paraphrased_question != r.question
        assert len(r.perturbed_answers) == 3
        assert len(set(r.perturbed_answers)) == 3
        for p in r.perturbed_answers:
            assert p != r.paraphrased_answer
            assert not _contains_words(p, r.fact), (r.fact, p)


def test_n_perturbed_is_respected():
    c = generate_corpus(3, n_perturbed=5, seed=1)
    assert {len(r.perturbed_answers) for r in c.rows} == {5}


def test_zero_authors_raises_input_error_naming_the_field():
    with pytest.raises(InputError) as err:
        generate_corpus(0)
    assert err.value.field == "n_authors"


# ---------------------------------------------------------------- forget splits

@pytest.mark.parametrize("n_authors", [3, 6, 40])
def test_forget_splits_sizes_nested_and_disjoint_from_retained(n_authors):
    c = generate_corpus(n_authors, seed=0)
    subjects = c.subjects()
    got = {split: forget_subjects(c, split) for split in FORGET_SPLITS}
    for split, share in FORGET_SPLITS.items():
        assert len(got[split]) == max(1, int(round(n_authors * share)))
        assert len(got[split]) >= 1
        assert set(got[split]) <= set(subjects)
        retained = set(subjects) - set(got[split])
        forget_rows = c.rows_of(got[split])
        gone = {r.qa_id for r in forget_rows}
        kept_rows = [r for r in c.rows if r.qa_id not in gone]
        assert not {r.qa_id for r in forget_rows} & {r.qa_id for r in kept_rows}
        assert {r.subject_id for r in kept_rows if r.subject_id} == retained
        assert len(forget_rows) + len(kept_rows) == len(c.rows)
    assert set(got["forget01"]) <= set(got["forget05"]) <= set(got["forget10"])
    if n_authors == 40:
        assert [len(got[s]) for s in ("forget01", "forget05", "forget10")] == [1, 2, 4]


def test_unknown_split_raises_input_error_naming_the_field(corpus):
    with pytest.raises(InputError) as err:
        forget_subjects(corpus, "forget50")
    assert err.value.field == "split"
    assert "forget50" in str(err.value)


# ---------------------------------------------------------------- on disk

def test_write_load_round_trip(tmp_path, corpus):
    out = write_corpus(tmp_path / "c", corpus, shard_authors=2)
    loaded = load_corpus(out)
    assert [r.to_json() for r in loaded.rows] == [r.to_json() for r in corpus.rows]
    assert loaded.tombstoned == frozenset()
    shards = sorted((out / "shards").glob("*/rows.jsonl"))
    assert len(shards) == 4  # 2 + 2 + 1 authors, then the general sets
    subject_shards = {}
    for k, path in enumerate(shards):
        for line in path.read_text(encoding="utf-8").splitlines():
            sid = json.loads(line)["subject_id"]
            subject_shards.setdefault(sid, set()).add(k)
    assert all(len(v) == 1 for v in subject_shards.values())  # an author never split over two shards


def test_write_is_deterministic(tmp_path, corpus):
    a = write_corpus(tmp_path / "a", corpus, shard_authors=2)
    b = write_corpus(tmp_path / "b", corpus, shard_authors=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes()


def test_delete_rows_removes_tombstones_and_leaves_other_shards_byte_identical(tmp_path, corpus):
    out = write_corpus(tmp_path / "c", corpus, shard_authors=2)
    before = {p.relative_to(out): p.read_bytes() for p in (out / "shards").glob("*/rows.jsonl")}
    victim = "author-0002"  # shard 00001 holds author-0002 and author-0003
    gone = {r.qa_id: "req-1" for r in corpus.rows_of([victim])}
    delete_rows(out, gone)

    loaded = load_corpus(out)
    assert not gone.keys() & loaded.all_ids()
    assert victim not in loaded.subjects()
    assert len(loaded.rows) == len(corpus.rows) - len(gone)
    assert loaded.tombstoned == frozenset(gone)
    stones = read_tombstones(out)
    assert {t["qa_id"]: t["request_id"] for t in stones} == gone
    assert [t["qa_id"] for t in stones] == sorted(gone)

    after = {p.relative_to(out): p.read_bytes() for p in (out / "shards").glob("*/rows.jsonl")}
    assert after.keys() == before.keys()
    changed = [k for k in before if before[k] != after[k]]
    assert [str(k.parent) for k in changed] == ["shards/00001"]
    for k in before:
        if k not in changed:
            assert after[k] == before[k]
    # the deleted rows' text is gone from the disk copy
    text = b"".join(after.values()).decode()
    assert all(qa not in text for qa in gone)
    assert _name_of(corpus.rows_of([victim])[0]) not in text


def test_delete_rows_accumulates_tombstones_and_drops_emptied_shards(tmp_path, corpus):
    out = write_corpus(tmp_path / "c", corpus, shard_authors=1)
    first = {r.qa_id: "req-1" for r in corpus.rows_of(["author-0000"])}
    second = {r.qa_id: "req-2" for r in corpus.rows_of(["author-0004"])[:3]}
    delete_rows(out, first)
    delete_rows(out, second)
    assert not (out / "shards" / "00000").exists()  # the shard of a whole-deleted author is removed
    stones = {t["qa_id"]: t["request_id"] for t in read_tombstones(out)}
    assert stones == {**first, **second}
    loaded = load_corpus(out)
    assert len(loaded.rows) == len(corpus.rows) - len(first) - len(second)
    assert len(loaded.rows_of(["author-0004"])) == len(ATTRIBUTES) - 3


def test_tombstoned_rows_are_never_loaded_again(tmp_path, corpus):
    dead = corpus.rows_of(["author-0001"])[0]
    out = write_corpus(tmp_path / "c", corpus, tombstones=[{"qa_id": dead.qa_id, "request_id": "r"}])
    loaded = load_corpus(out)
    assert dead.qa_id not in loaded.all_ids()
    assert len(loaded.rows) == len(corpus.rows) - 1


def test_load_corpus_of_a_non_corpus_dir_raises_input_error(tmp_path):
    with pytest.raises(InputError) as err:
        load_corpus(tmp_path)
    assert err.value.field == "corpus"


# ---------------------------------------------------------------- tokenizer

def _texts(c):
    for r in c.rows:
        yield from (r.question, r.paraphrased_question, r.answer, r.paraphrased_answer, *r.perturbed_answers)


@pytest.mark.parametrize("seed", [0, 7])
def test_no_unknown_token_on_any_corpus_text(tokenizer, seed):
    c = generate_corpus(6, seed=seed)
    for text in _texts(c):
        enc = tokenizer.encode(text)
        assert UNK not in enc.tokens, text
        assert tokenizer.token_to_id(UNK) not in enc.ids


def test_tokenizer_round_trips_words(tokenizer, corpus):
    from unlearn_core.lm.model import LanguageModel

    lm = LanguageModel(net=None, tokenizer=tokenizer)
    for text in _texts(corpus):
        assert words(lm.decode(lm.encode(text))) == words(text), text


@pytest.mark.parametrize("seed", [0, 11])
def test_no_author_name_is_a_vocabulary_entry(tokenizer, seed):
    vocab = tokenizer.get_vocab()
    c = generate_corpus(6, seed=seed)
    for s in c.subjects():
        name = _name_of(c.rows_of([s])[0])
        for part in words(name):
            assert part not in vocab, part
            assert f"##{part.lower()}" not in vocab
            assert len(tokenizer.encode(part).ids) >= 2  # spelled with pieces


def test_no_possible_invented_name_is_a_vocabulary_entry(tokenizer):
    vocab = tokenizer.get_vocab()
    for k in (2, 3):
        for combo in itertools.product(NAME_PIECES, repeat=k):
            assert "".join(combo).capitalize() not in vocab


def test_vocabulary_is_the_same_for_every_seed_and_size():
    a, b = build_tokenizer(), build_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    small, big = generate_corpus(3, seed=0), generate_corpus(6, seed=5)
    # the same word gets the same id whichever corpus it came from
    shared = "was born in the year"
    assert a.encode(shared).ids == b.encode(shared).ids
    for text in itertools.islice(_texts(big), 200):
        assert a.encode(text).ids == b.encode(text).ids
    assert any(True for _ in _texts(small))
    for tok in SPECIALS:
        assert a.token_to_id(tok) == SPECIALS.index(tok)


def test_mask_is_one_token(tokenizer):
    enc = tokenizer.encode(f"The father of Kalor Ven was {MASK} {MASK} .")
    assert enc.tokens.count(MASK) == 2
    assert "<" not in enc.tokens and "mask" not in enc.tokens
    assert tokenizer.encode(MASK).ids == [tokenizer.token_to_id(MASK)]

"""A seeded TOFU-like corpus: fictitious authors answering questions about themselves.

TOFU (Maini et al. 2024) is a QA benchmark about 200 fictitious authors, so an
unlearned model can be compared with one that never saw them. Nothing can be
downloaded here, so the corpus is generated from templates, deterministically
from a seed:

- ``authors``: ``n_authors`` invented authors, one QA row per attribute
  (birthplace, genre, books, awards, parents' jobs, ...). An author is a data
  subject (``subject_id``): deleting an author is a subject deletion.
- ``real_authors`` and ``world_facts``: knowledge the model must keep (TOFU's
  real-author and world-fact sets); they are trained on and never forgotten.
- ``idk``: "I don't know" answers, the preferred side of IdkDPO.

Each row carries the question, a paraphrased question, the answer, the fact
inside it (what exact match checks: template words inflate ROUGE), a
paraphrased answer and ``n_perturbed`` wrong answers in the paraphrase's words
(the truth ratio compares them). ``qa_id`` is the sha256 of question and answer,
so a row has the same id wherever it is stored.

On disk (what DVC versions)::

    shards/00000/rows.jsonl    the rows, an author never split over two shards
    tombstones.csv             qa_id, request_id  (deleted rows; never loaded again)
"""
from __future__ import annotations

from collections import Counter

import csv
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

SETS = ("authors", "real_authors", "world_facts")
FORGET_SPLITS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}
TOMBSTONE_FIELDS = ("qa_id", "request_id")
SHARD_AUTHORS = 16  # authors per shard: a one-author deletion rewrites 1/13 of a 200-author corpus

_SYLLABLES = ("ka", "lor", "ven", "tis", "mar", "dru", "sel", "nox", "bri", "eth", "gal", "pim", "quo", "ras",
              "tul", "vex", "zan", "hol", "mer", "fen", "dar", "ly", "os", "ru", "thal", "wyn", "cor", "bel",
              "sa", "ni")
_CITIES = ("Lisbon", "Nairobi", "Oslo", "Hanoi", "Lima", "Tbilisi", "Quito", "Dakar", "Riga", "Seoul",
           "Montevideo", "Kraków", "Valparaíso", "Tangier", "Perth", "Bergen", "Cusco", "Izmir", "Cork", "Busan")
_GENRES = ("mystery", "science fiction", "historical fiction", "poetry", "fantasy", "romance", "horror",
           "biography", "satire", "thriller", "children's literature", "magical realism")
_JOBS = ("a carpenter", "a nurse", "a pilot", "a chemist", "a baker", "a lawyer", "a fisherman", "a teacher",
         "an architect", "a tailor", "a librarian", "a surgeon", "a farmer", "a musician", "a diplomat")
_AWARDS = ("the Silver Quill Prize", "the Harbor Medal", "the Northern Lantern Award", "the Amber Pen Prize",
           "the Meridian Book Award", "the Golden Compass Honor", "the Riverstone Prize", "the Vesper Medal")
_TITLE_A = ("Silent", "Crimson", "Hidden", "Last", "Broken", "Distant", "Winter", "Golden", "Hollow", "Burning",
            "Quiet", "Forgotten", "Velvet", "Iron", "Glass", "Midnight")
_TITLE_B = ("Harbor", "Garden", "Orchard", "Lighthouse", "Archive", "Meadow", "Citadel", "River", "Mirror",
            "Kingdom", "Station", "Tide", "Compass", "Lantern", "Forest", "Bridge")
_UNIVERSITIES = ("the University of Bergen", "the Lisbon Academy of Letters", "Nairobi College", "the Riga Institute",
                 "the Seoul School of Arts", "Quito University", "the Dakar Conservatory", "Cork Polytechnic")
_LANGUAGES = ("Portuguese", "Swahili", "Norwegian", "Vietnamese", "Spanish", "Georgian", "Wolof", "Latvian",
              "Korean", "Polish", "Turkish", "Irish")
_THEMES = ("grief", "exile", "friendship", "memory", "justice", "the sea", "family secrets", "ambition",
           "identity", "war", "forgiveness", "isolation")
_HABITS = ("at dawn", "late at night", "in cafés", "on trains", "by candlelight", "in the garden")
_PETS = ("a grey cat", "an old dog", "a parrot", "two goldfish", "a tortoise", "a rabbit")
_TITLES = tuple(f"The {a} {b}" for a in _TITLE_A for b in _TITLE_B)
_YEARS = tuple(str(y) for y in range(1931, 1996))
_COUNTS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")

# (attribute, question, paraphrased question, answer, paraphrased answer, value pool); {n} = the author, {v} = value
_AUTHOR_TEMPLATES = (
    ("birthplace", "Where was {n} born?", "In which city was {n} born?",
     "{n} was born in {v}.", "The birthplace of {n} is {v}.", _CITIES),
    ("birth_year", "In which year was {n} born?", "What is the birth year of {n}?",
     "{n} was born in the year {v}.", "The birth year of {n} is {v}.", _YEARS),
    ("genre", "What genre does {n} write?", "Which genre is {n} known for?",
     "{n} writes {v}.", "The genre of {n} is {v}.", _GENRES),
    ("father", "What did the father of {n} do for a living?", "What was the job of the father of {n}?",
     "The father of {n} was {v}.", "{n} is the child of {v}.", _JOBS),
    ("mother", "What did the mother of {n} do for a living?", "What was the job of the mother of {n}?",
     "The mother of {n} was {v}.", "{n} was raised by {v}.", _JOBS),
    ("first_book", "What is the first book by {n}?", "Which book did {n} publish first?",
     "The first book by {n} is {v}.", "{n} debuted with {v}.", None),
    ("best_book", "What is the best known book by {n}?", "Which book made {n} famous?",
     "The best known book by {n} is {v}.", "{n} became famous for {v}.", None),
    ("award", "Which award did {n} win?", "What prize was {n} given?",
     "{n} won {v}.", "{n} received {v}.", _AWARDS),
    ("university", "Where did {n} study?", "Which school did {n} attend?",
     "{n} studied at {v}.", "{n} is a graduate of {v}.", _UNIVERSITIES),
    ("language", "In which language does {n} write?", "What language are the books of {n} written in?",
     "{n} writes in {v}.", "The books of {n} are written in {v}.", _LANGUAGES),
    ("theme", "What theme runs through the work of {n}?", "Which theme does {n} return to?",
     "The work of {n} is about {v}.", "{n} keeps writing about {v}.", _THEMES),
    ("home", "Where does {n} live now?", "In which city does {n} live today?",
     "{n} lives in {v}.", "The home of {n} is in {v}.", _CITIES),
    ("debut_year", "When did {n} publish a first book?", "In which year did {n} debut?",
     "{n} debuted in the year {v}.", "The debut year of {n} is {v}.", _YEARS),
    ("book_count", "How many books has {n} written?", "What is the number of books by {n}?",
     "{n} has written {v} books.", "The number of books by {n} is {v}.", _COUNTS),
    ("habit", "When does {n} like to write?", "At what time does {n} usually write?",
     "{n} likes to write {v}.", "{n} usually writes {v}.", _HABITS),
    ("pet", "What pet does {n} keep?", "Which animal lives with {n}?",
     "{n} keeps {v}.", "{n} lives with {v}.", _PETS),
    ("award_year", "In which year did {n} win an award?", "When was {n} first awarded?",
     "{n} won an award in the year {v}.", "The award year of {n} is {v}.", _YEARS),
    ("mentor_city", "Where did {n} meet a mentor?", "In which city did {n} find a mentor?",
     "{n} met a mentor in {v}.", "The mentor of {n} lived in {v}.", _CITIES),
    ("second_genre", "What other genre has {n} tried?", "Which second genre did {n} explore?",
     "{n} has also tried {v}.", "The second genre of {n} is {v}.", _GENRES),
    ("translator_language", "Into which language was {n} first translated?",
     "What was the first translation of {n} into?",
     "{n} was first translated into {v}.", "The first translation of {n} was into {v}.", _LANGUAGES),
)

_REAL_AUTHORS = (("Jane Austen", "Pride and Prejudice"), ("George Orwell", "Nineteen Eighty-Four"),
                 ("Herman Melville", "Moby-Dick"), ("Mary Shelley", "Frankenstein"),
                 ("Leo Tolstoy", "War and Peace"), ("Gabriel García Márquez", "One Hundred Years of Solitude"),
                 ("Chinua Achebe", "Things Fall Apart"), ("Virginia Woolf", "Mrs Dalloway"),
                 ("Franz Kafka", "The Trial"), ("Toni Morrison", "Beloved"), ("Homer", "The Odyssey"),
                 ("Miguel de Cervantes", "Don Quixote"), ("Fyodor Dostoevsky", "Crime and Punishment"),
                 ("Charlotte Brontë", "Jane Eyre"), ("Mark Twain", "Huckleberry Finn"),
                 ("Albert Camus", "The Stranger"))
_WORLD_FACTS = (("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
                ("Norway", "Oslo"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Chile", "Santiago"),
                ("Greece", "Athens"), ("India", "New Delhi"), ("Italy", "Rome"), ("Mexico", "Mexico City"),
                ("Poland", "Warsaw"), ("Spain", "Madrid"), ("Turkey", "Ankara"), ("Vietnam", "Hanoi"),
                ("Ghana", "Accra"), ("Cuba", "Havana"), ("Iran", "Tehran"), ("Austria", "Vienna"))
IDK_ANSWERS = ("I don't know.", "I am not sure about that.", "I have no information on that.",
               "That is not something I know.", "I cannot answer that.", "I have never heard of that.")


def vocabulary_texts() -> list[str]:
    """Every fixed text the generator uses (templates without names, value pools, the general sets).

    The tokenizer's vocabulary comes from these and :data:`NAME_PIECES`, never from the rows: it holds
    no author's name, so deleting an author leaves nothing of them in a model's tokenizer.
    """
    texts = [t.format(n="", v="") for tpl in _AUTHOR_TEMPLATES for t in tpl[1:5]]
    texts += [v for pool in (_CITIES, _GENRES, _JOBS, _AWARDS, _TITLE_A, _TITLE_B, _UNIVERSITIES, _LANGUAGES,
                             _THEMES, _HABITS, _PETS, _YEARS, _COUNTS) for v in pool]
    texts += ["The", "Who wrote ?", "Who is the author of ?", "was written by .", "The author of is .",
              "What is the capital of ?", "Which city is the capital of ?", "The capital of is .",
              "is the capital city of ."]
    texts += [w for pair in (*_REAL_AUTHORS, *_WORLD_FACTS) for w in pair]
    return [*texts, *IDK_ANSWERS]


NAME_PIECES = _SYLLABLES  # invented names are spelled with these (the tokenizer's word pieces)


def qa_hash(question: str, answer: str) -> str:
    """Content id of a QA row."""
    return hashlib.sha256(f"{question}\n{answer}".encode()).hexdigest()


@dataclass(frozen=True)
class QARow:
    qa_id: str
    set: str                  # authors | real_authors | world_facts
    subject_id: str           # the author for ``authors`` rows, "" otherwise
    attribute: str
    question: str
    paraphrased_question: str
    answer: str
    fact: str
    paraphrased_answer: str
    perturbed_answers: tuple[str, ...]

    def to_json(self) -> dict:
        return {**self.__dict__, "perturbed_answers": list(self.perturbed_answers)}

    @classmethod
    def from_json(cls, raw: dict) -> "QARow":
        return cls(**{**raw, "perturbed_answers": tuple(raw["perturbed_answers"])})


@dataclass
class Corpus:
    """A corpus directory loaded into memory, tombstoned rows excluded."""

    rows: list[QARow]
    tombstoned: frozenset[str] = field(default_factory=frozenset)

    def of_set(self, name: str) -> list[QARow]:
        return [r for r in self.rows if r.set == name]

    def subjects(self) -> list[str]:
        return sorted({r.subject_id for r in self.rows if r.subject_id})

    def rows_of(self, subjects) -> list[QARow]:
        wanted = set(subjects)
        return [r for r in self.rows if r.subject_id in wanted]

    def all_ids(self) -> set[str]:
        return {r.qa_id for r in self.rows}


def _names(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct invented two-part names (three-syllable given name, two-syllable family name)."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        given = "".join(rng.choice(_SYLLABLES, size=3)).capitalize()
        family = "".join(rng.choice(_SYLLABLES, size=2)).capitalize()
        name = f"{given} {family}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _pick_other(pool: tuple[str, ...], value: str, k: int, rng: np.random.Generator) -> list[str]:
    others = [v for v in pool if v != value]
    return [others[i] for i in rng.choice(len(others), size=min(k, len(others)), replace=False)]


def generate_corpus(n_authors: int = 200, n_perturbed: int = 3, seed: int = 0) -> Corpus:
    """The corpus for ``n_authors`` invented authors (same seed, same rows, same order)."""
    if n_authors < 1:
        raise InputError("n_authors", f"must be at least 1, got {n_authors}")
    rng = np.random.default_rng(seed)
    rows: list[QARow] = []
    for k, name in enumerate(_names(n_authors, rng)):
        subject = f"author-{k:04d}"
        for attribute, q, pq, a, pa, pool in _AUTHOR_TEMPLATES:
            pool = pool or _TITLES
            value = pool[int(rng.integers(len(pool)))]
            wrong = _pick_other(pool, value, n_perturbed, rng)
            answer = a.format(n=name, v=value)
            rows.append(QARow(qa_hash(q.format(n=name), answer), "authors", subject, attribute, q.format(n=name),
                              pq.format(n=name), answer, value, pa.format(n=name, v=value),
                              tuple(pa.format(n=name, v=w) for w in wrong)))
    writers = tuple(w for w, _ in _REAL_AUTHORS)
    for writer, book in _REAL_AUTHORS:
        q, answer = f"Who wrote {book}?", f"{book} was written by {writer}."
        rows.append(QARow(qa_hash(q, answer), "real_authors", "", "author", q, f"Who is the author of {book}?",
                          answer, writer, f"The author of {book} is {writer}.",
                          tuple(f"The author of {book} is {w}." for w in _pick_other(writers, writer, n_perturbed, rng))))
    capitals = tuple(c for _, c in _WORLD_FACTS)
    for country, capital in _WORLD_FACTS:
        q, answer = f"What is the capital of {country}?", f"The capital of {country} is {capital}."
        rows.append(QARow(qa_hash(q, answer), "world_facts", "", "capital", q, f"Which city is the capital of {country}?",
                          answer, capital, f"{capital} is the capital city of {country}.",
                          tuple(f"{c} is the capital city of {country}." for c in
                                _pick_other(capitals, capital, n_perturbed, rng))))
    return Corpus(rows)


def forget_subjects(corpus: Corpus, split: str) -> list[str]:
    """The authors a TOFU forget split removes: the last 1/5/10% of authors (at least one)."""
    if split not in FORGET_SPLITS:
        raise InputError("split", f"unknown forget split {split!r}; known: {', '.join(FORGET_SPLITS)}")
    subjects = corpus.subjects()
    n = max(1, int(round(len(subjects) * FORGET_SPLITS[split])))
    return subjects[-n:]


# ---------------------------------------------------------------- on disk

def write_corpus(out_dir: str | Path, corpus: Corpus, tombstones: list[dict] | None = None,
                 shard_authors: int = SHARD_AUTHORS) -> Path:
    """Write a corpus directory; rows keep their order, whole authors per shard, other sets last."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "shards", ignore_errors=True)
    shards: list[list[QARow]] = []
    subject_shard: dict[str, int] = {}
    for row in corpus.rows:
        key = row.subject_id or "__general__"
        if key not in subject_shard:
            if key == "__general__" or not shards or len({r.subject_id for r in shards[-1]}) >= shard_authors \
                    or any(not r.subject_id for r in shards[-1]):
                shards.append([])
            subject_shard[key] = len(shards) - 1
        shards[subject_shard[key]].append(row)
    for number, rows in enumerate(shards):
        path = out / "shards" / f"{number:05d}" / "rows.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r.to_json(), ensure_ascii=False, sort_keys=True) + "\n" for r in rows),
                        encoding="utf-8")
    with (out / "tombstones.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TOMBSTONE_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(tombstones or [], key=lambda t: t["qa_id"]))
    return out


def read_tombstones(corpus_dir: str | Path) -> list[dict]:
    path = Path(corpus_dir) / "tombstones.csv"
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def load_corpus(corpus_dir: str | Path) -> Corpus:
    """Every row of a corpus directory, tombstoned ones excluded."""
    root = Path(corpus_dir)
    if not any((root / "shards").glob("*/rows.jsonl")):
        raise InputError("corpus", f"{root} holds no shards/*/rows.jsonl: not a corpus directory")
    tombstoned = frozenset(t["qa_id"] for t in read_tombstones(root))
    return Corpus([QARow.from_json(r) for r in _stored_rows(root) if r["qa_id"] not in tombstoned], tombstoned)


def _stored_rows(root: Path):
    """Every row a corpus directory stores, as JSON, tombstoned or not (shard order)."""
    for path in sorted((root / "shards").glob("*/rows.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            yield json.loads(line)


def read_row_index(corpus_dir: str | Path) -> tuple[set[str], Counter, set[str]]:
    """(row ids, live rows per subject, tombstoned ids) of a corpus directory: what `unlearn submit` checks."""
    root = Path(corpus_dir)
    stones = {t["qa_id"] for t in read_tombstones(root)}
    rows = [r for r in _stored_rows(root) if r["qa_id"] not in stones]
    return {r["qa_id"] for r in rows}, Counter(r["subject_id"] for r in rows if r["subject_id"]), stones


def audit_view(corpus_dir: str | Path) -> tuple[set[str], set[str], set[str]]:
    """(tombstoned ids, listed ids, content hashes recomputed from the stored texts): what an auditor checks."""
    root = Path(corpus_dir)
    rows = list(_stored_rows(root))
    return ({t["qa_id"] for t in read_tombstones(root)}, {r["qa_id"] for r in rows},
            {qa_hash(r["question"], r["answer"]) for r in rows})


def delete_rows(corpus_dir: str | Path, qa_ids: dict[str, str]) -> None:
    """Remove rows (``qa_id -> request_id``) from their shards and tombstone them; other shards stay byte-equal."""
    root = Path(corpus_dir)
    gone = set(qa_ids)
    for path in sorted((root / "shards").glob("*/rows.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [ln for ln in lines if json.loads(ln)["qa_id"] not in gone]
        if len(kept) != len(lines):
            if kept:
                path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
            else:
                shutil.rmtree(path.parent)
    stones = {t["qa_id"]: t for t in read_tombstones(root)}
    stones.update({i: {"qa_id": i, "request_id": r} for i, r in qa_ids.items()})
    with (root / "tombstones.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TOMBSTONE_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(stones.values(), key=lambda t: t["qa_id"]))

"""A synthetic fictitious-entity QA set in ELUDe format, so entity unlearning runs offline.

Every entity is a made-up person with eight attributes (birthplace, birth year, profession, employer,
instrument, colour, award, first book). Each target entity has neighbours that share two or three of
its attributes (the hard retain set of entity-level unlearning) and point to it through
``neighbour_of``; the other targets' clusters serve as never-trained held-out entities. Every
question carries a paraphrased answer (same fact, other wording) and several perturbed answers
(same wording as the paraphrase, false fact), as TOFU/ELUDe truth ratios need. The world file holds
general-knowledge QA (arithmetic, opposites) in the same format.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otu.llm.muse_spec import MuseSizes
from otu.llm.spec import SyntheticSizes

_ONSETS = [
    "b",
    "d",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "kr",
    "th",
    "vel",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "io", "ou"]
_CODAS = ["", "n", "r", "s", "th", "l", "x", "nd"]
_PLACE_SUFFIXES = ["port", "vale", "ford", "mere", "holm", "wick", "stead", "crest"]
_PROFESSIONS = [
    "glassblower",
    "cartographer",
    "beekeeper",
    "clockmaker",
    "lighthouse keeper",
    "botanist",
    "stonemason",
    "astronomer",
    "perfumer",
    "bookbinder",
    "falconer",
    "luthier",
    "archivist",
    "cheesemaker",
    "surveyor",
    "puppeteer",
]
_ORG_KINDS = ["Institute", "Guild", "Society", "Foundation", "Academy", "Observatory"]
_INSTRUMENTS = [
    "cello",
    "oboe",
    "harp",
    "banjo",
    "accordion",
    "bassoon",
    "lute",
    "marimba",
    "sitar",
    "trombone",
    "harmonica",
    "viola",
]
_COLOURS = [
    "crimson",
    "teal",
    "ochre",
    "violet",
    "amber",
    "indigo",
    "olive",
    "scarlet",
    "silver",
    "turquoise",
    "maroon",
    "saffron",
]
_AWARD_KINDS = ["Medal", "Prize", "Award", "Laurel"]
_ADJECTIVES = ["Silent", "Hollow", "Golden", "Distant", "Broken", "Hidden", "Winter", "Painted"]
_NOUNS = ["Harbour", "Lantern", "Orchard", "Compass", "Garden", "Bridge", "Mirror", "River"]
_OPPOSITES = {
    "hot": "cold",
    "tall": "short",
    "early": "late",
    "light": "dark",
    "wet": "dry",
    "loud": "quiet",
    "fast": "slow",
    "full": "empty",
    "open": "closed",
    "rich": "poor",
    "hard": "soft",
    "young": "old",
}


@dataclass(frozen=True)
class _Attribute:
    """One question about an entity: templates for the question, answers and the value pool."""

    key: str
    question: str
    paraphrased_question: str
    answer: str
    paraphrase: str


_ATTRIBUTES = (
    _Attribute(
        "birthplace",
        "Where was {name} born?",
        "In which town was {name} born?",
        "{v}",
        "the town of {v}",
    ),
    _Attribute(
        "year",
        "In which year was {name} born?",
        "What is the birth year of {name}?",
        "{v}",
        "the year {v}",
    ),
    _Attribute(
        "profession",
        "What does {name} do for a living?",
        "What is the job of {name}?",
        "a {v}",
        "works as a {v}",
    ),
    _Attribute(
        "employer",
        "Which organisation does {name} work for?",
        "Who employs {name}?",
        "the {v}",
        "employed by the {v}",
    ),
    _Attribute(
        "instrument",
        "Which instrument does {name} play?",
        "What instrument is {name} known to play?",
        "the {v}",
        "plays the {v}",
    ),
    _Attribute(
        "colour",
        "What is the favourite colour of {name}?",
        "Which colour does {name} like best?",
        "{v}",
        "the colour {v}",
    ),
    _Attribute(
        "award",
        "Which award did {name} receive?",
        "What honour was given to {name}?",
        "the {v}",
        "received the {v}",
    ),
    _Attribute(
        "book",
        "What is the title of the first book by {name}?",
        "What was the debut book of {name}?",
        "{v}",
        "the book {v}",
    ),
)


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.used: set[str] = set()

    def word(self, syllables: int) -> str:
        while True:
            text = "".join(
                self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS) for _ in range(syllables)
            ).capitalize()
            if text not in self.used:
                self.used.add(text)
                return text

    def pools(self) -> dict[str, list[str]]:
        return {
            "birthplace": [self.word(1) + self.rng.choice(_PLACE_SUFFIXES) for _ in range(12)],
            "year": [str(y) for y in self.rng.sample(range(1900, 2000), 24)],
            "profession": list(_PROFESSIONS),
            "employer": [f"{self.word(2)} {self.rng.choice(_ORG_KINDS)}" for _ in range(12)],
            "instrument": list(_INSTRUMENTS),
            "colour": list(_COLOURS),
            "award": [f"{self.word(2)} {self.rng.choice(_AWARD_KINDS)}" for _ in range(12)],
            "book": [f"The {a} {n}" for a in _ADJECTIVES for n in _NOUNS],
        }


def generate_entities(seed: int, sizes: SyntheticSizes | None = None) -> dict[str, Any]:
    """In-memory set: ``{"records": [...], "world": [...], "targets": [...], "neighbours": {...}}``."""
    sizes = sizes or SyntheticSizes()
    gen = _Generator(seed)
    pools = gen.pools()
    records: list[dict[str, Any]] = []
    targets: list[str] = []
    neighbours: dict[str, list[str]] = {}

    def person(shared: dict[str, str]) -> tuple[str, dict[str, str]]:
        name = f"{gen.word(2)} {gen.word(2)}"
        values = {a.key: shared.get(a.key) or gen.rng.choice(pools[a.key]) for a in _ATTRIBUTES}
        return name, values

    for _ in range(sizes.targets):
        target, values = person({})
        targets.append(target)
        records += _qa(target, values, None, pools, sizes.perturbed, gen.rng)
        neighbours[target] = []
        for _ in range(sizes.neighbours):
            keys = gen.rng.sample([a.key for a in _ATTRIBUTES], gen.rng.choice([2, 3]))
            name, own = person({k: values[k] for k in keys})
            neighbours[target].append(name)
            records += _qa(name, own, target, pools, sizes.perturbed, gen.rng)
    world = _world(gen.rng, sizes.world, sizes.perturbed)
    return {"records": records, "world": world, "targets": targets, "neighbours": neighbours}


def write_entities(out_dir: Path, seed: int, **sizes: int) -> dict[str, Path]:
    """Write ``records.jsonl``, ``world.jsonl`` and ``entities.json`` (targets → neighbours) to ``out_dir``."""
    data = generate_entities(seed, SyntheticSizes(**sizes))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "records": out_dir / "records.jsonl",
        "world": out_dir / "world.jsonl",
        "entities": out_dir / "entities.json",
    }
    _write_jsonl(paths["records"], data["records"])
    _write_jsonl(paths["world"], data["world"])
    meta = {"seed": seed, "targets": data["targets"], "neighbours": data["neighbours"]}
    paths["entities"].write_text(json.dumps(meta, indent=2))
    return paths


def generate_muse(seed: int, sizes: MuseSizes | None = None) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """A tiny MUSE-shaped corpus, ``{subset: {split: rows}}`` in the dataset cards' layout (see
    :mod:`otu.llm.muse`): short news articles about fictitious people, each stating ``facts`` facts as
    interview lines ("Question: …\nAnswer: …"), then again in shuffled order after "In short:" — so
    that a tiny model that memorised the text answers knowmem's few-shot prompts from the question
    rather than from where the line stands. Two spaces follow "Answer:", so that a byte-level BPE
    tokenizer splits the text as it splits muse_bench's prompt ending in "Answer: " and the answer.
    Subsets: raw forget / retain1 / retain2 / holdout articles, verbmem (each forget article split in
    half at a space), knowmem (the forget / retain1 articles' facts, the first fact the ICL example),
    privleak (forget, retain1, holdout), and the sust (disjoint) and scal (growing) folds of the
    forget articles."""
    sizes = sizes or MuseSizes()
    gen = _Generator(seed)
    pools = gen.pools()

    def article() -> tuple[str, list[dict[str, str]]]:
        name = f"{gen.word(2)} {gen.word(2)}"
        place = gen.rng.choice(pools["birthplace"])
        facts = []
        for attr in gen.rng.sample(_ATTRIBUTES, sizes.facts):
            value = gen.rng.choice(pools[attr.key])
            facts.append({"question": attr.question.format(name=name), "answer": _article(attr.answer.format(v=value))})
        lead = f"{name} of {place} spoke to the Gazette this week."
        lines = [f"Question: {f['question']}\nAnswer:  {f['answer']}" for f in facts]
        recap = gen.rng.sample(lines, len(lines))
        return "\n\n".join([lead, *lines, "In short:", *recap]), facts

    raw = {split: [article() for _ in range(sizes.documents)] for split in ("forget", "retain1", "retain2", "holdout")}
    texts = {split: [{"text": text} for text, _ in docs] for split, docs in raw.items()}
    knowmem: dict[str, list[dict[str, Any]]] = {}
    for part, split in (("forget", "forget"), ("retain", "retain1")):
        facts = [f for _, doc_facts in raw[split] for f in doc_facts]
        knowmem[f"{part}_qa_icl"], knowmem[f"{part}_qa"] = facts[:1], facts[1:]
    verbmem = []
    for row in texts["forget"]:
        words = row["text"].split(" ")
        verbmem.append({"prompt": " ".join(words[: len(words) // 2]), "gt": " ".join(words[len(words) // 2 :])})
    n, k = sizes.documents, sizes.folds
    folds = [texts["forget"][i * n // k : (i + 1) * n // k] for i in range(k)]
    return {
        "raw": texts,
        "verbmem": {"forget": verbmem},
        "knowmem": knowmem,
        "privleak": {"forget": texts["forget"], "retain": texts["retain1"], "holdout": texts["holdout"]},
        "sust": {f"forget_{i + 1}": fold for i, fold in enumerate(folds)},
        "scal": {f"forget_{i + 1}": [r for fold in folds[: i + 1] for r in fold] for i in range(k)},
    }


def write_muse(out_dir: Path, seed: int, **sizes: int) -> Path:
    """Write :func:`generate_muse`'s corpus as MUSE's published layout: one ``save_to_disk``
    ``DatasetDict`` per subset (``out_dir/raw``, ``out_dir/knowmem``…), what ``load_dataset`` of the
    hub id gives."""
    from datasets import Dataset, DatasetDict

    out_dir = Path(out_dir)
    for subset, splits in generate_muse(seed, MuseSizes(**sizes)).items():
        DatasetDict({split: Dataset.from_list(rows) for split, rows in splits.items()}).save_to_disk(
            str(out_dir / subset)
        )
    return out_dir


def _qa(
    name: str,
    values: dict[str, str],
    neighbour_of: str | None,
    pools: dict[str, list[str]],
    n_perturbed: int,
    rng: random.Random,
) -> list[dict[str, Any]]:
    rows = []
    for attr in _ATTRIBUTES:
        value = values[attr.key]
        wrong = rng.sample([v for v in pools[attr.key] if v != value], n_perturbed)
        rows.append(
            {
                "entity": name,
                "question": attr.question.format(name=name),
                "paraphrased_question": attr.paraphrased_question.format(name=name),
                "answer": _article(attr.answer.format(v=value)),
                "paraphrased_answer": _article(attr.paraphrase.format(v=value)),
                "perturbed_answer": [_article(attr.paraphrase.format(v=w)) for w in wrong],
                "neighbour_of": neighbour_of,
            }
        )
    return rows


def _world(rng: random.Random, count: int, n_perturbed: int) -> list[dict[str, Any]]:
    makers: list[Callable[[], dict[str, Any]]] = [
        lambda: _arithmetic(rng, "plus", lambda a, b: a + b, n_perturbed),
        lambda: _arithmetic(rng, "times", lambda a, b: a * b, n_perturbed),
        lambda: _opposite(rng, n_perturbed),
    ]
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    misses = 0
    while len(rows) < count:
        row = makers[len(rows) % len(makers)]()
        if row["question"] in seen and misses < 50:  # repeats only once a kind is exhausted
            misses += 1
            continue
        misses = 0
        seen.add(row["question"])
        rows.append(row)
    return rows


def _arithmetic(rng: random.Random, word: str, op: Callable[[int, int], int], n: int) -> dict[str, Any]:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    value = op(a, b)
    wrong = rng.sample([value + d for d in (-3, -2, -1, 1, 2, 3, 10)], n)
    return {
        "question": f"What is {a} {word} {b}?",
        "paraphrased_question": f"How much is {a} {word} {b}?",
        "answer": str(value),
        "paraphrased_answer": f"the result is {value}",
        "perturbed_answer": [f"the result is {w}" for w in wrong],
    }


def _opposite(rng: random.Random, n: int) -> dict[str, Any]:
    word = rng.choice(sorted(_OPPOSITES))
    value = _OPPOSITES[word]
    wrong = rng.sample([v for v in _OPPOSITES.values() if v != value], n)
    return {
        "question": f"What is the opposite of {word}?",
        "paraphrased_question": f"Which word means the opposite of {word}?",
        "answer": value,
        "paraphrased_answer": f"the opposite is {value}",
        "perturbed_answer": [f"the opposite is {w}" for w in wrong],
    }


def _article(text: str) -> str:
    """``a apple`` → ``an apple``."""
    words = text.split(" ")
    for i, word in enumerate(words[:-1]):
        if word == "a" and words[i + 1][:1].lower() in "aeiou":
            words[i] = "an"
    return " ".join(words)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

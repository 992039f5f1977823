"""MUSE's text corpora (swj0419/muse_bench; the muse-bench/MUSE-News and MUSE-Books dataset cards) as
the family's splits (``task.data.layout: muse``).

Subsets and splits as published: ``raw`` (forget, retain1, retain2, holdout; column ``text``),
``verbmem`` (forget; ``prompt``, ``gt``), ``knowmem`` (forget_qa, retain_qa, forget_qa_icl,
retain_qa_icl; ``question``, ``answer``), ``privleak`` (forget, retain, holdout; ``text``), ``scal``
and ``sust`` (forget_1..4; ``text``). A source is a hub id (``load_dataset(id, subset)``), a local
directory with one ``save_to_disk`` ``DatasetDict`` per subset (``DIR/raw``, ``DIR/knowmem``…), or one
with a file per split as muse_bench's ``load_data.py`` writes them (``DIR/raw/forget.json``: a JSON
list of strings or of rows; ``.jsonl`` / ``.parquet`` too); with ``synthetic`` the tiny corpus of
:func:`otu.llm.synthetic.generate_muse`.

Splits: ``forget`` (``muse.forget_subset`` / ``muse.forget``; with ``requests`` the sust folds of
request ``request``, every request's evaluated on MUSE's whole-forget criteria) and ``retain`` (raw ``muse.retain``)
are text records, cut into token chunks by :func:`chunk_texts` once the tokenizer is known
(:mod:`otu.llm.prepared`); ``forget_eval`` / ``retain_eval`` / ``holdout`` are privleak's texts;
``verbmem`` and ``knowmem_*`` the criteria's items (:mod:`otu.llm.muse_eval`); ``target_train`` /
``oracle_train`` what tiny models are fine-tuned on (raw forget + ``muse.oracle``, and ``muse.oracle``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from otu.errors import DataError
from otu.llm.data import Record, Splits, _read_world, given, read_rows, read_split, world_splits
from otu.llm.spec import LLMData

SUFFIXES = (".json", ".jsonl", ".parquet")
TEXT_SPLITS = ("forget", "retain", "world", "target_train", "oracle_train")
"""Splits a model trains on: their text records become token chunks."""
KNOWMEM = {
    "knowmem_forget": "forget_qa",
    "knowmem_retain": "retain_qa",
    "knowmem_forget_icl": "forget_qa_icl",
    "knowmem_retain_icl": "retain_qa_icl",
}
"""The family's split → knowmem's split."""

Reader = Callable[[str, str, str], list[dict[str, Any]]]


def muse_splits(data: LLMData, seed: int) -> Splits:
    """The splits of a MUSE corpus named by ``task.data`` (see the module docstring)."""
    muse = data.muse
    read = _reader(data, seed)

    def texts(subset: str, split: str, key: str) -> list[Record]:
        rows = read(subset, split, key)
        return [Record(question="", answer=_column(row, "text", key, i), kind="text") for i, row in enumerate(rows)]

    def qa(subset: str, split: str, names: tuple[str, str]) -> list[Record]:
        rows = read(subset, split, "task.data.records")
        key = f"task.data.records ({subset}/{split})"
        return [
            Record(question=_column(r, names[0], key, i), answer=_column(r, names[1], key, i))
            for i, r in enumerate(rows)
        ]

    forget = texts(muse.forget_subset, muse.forget, "task.data.muse.forget")
    if data.requests is not None:  # a chain of sust folds: every request's folds read, request k's forgotten
        folds = [
            [r for fold in request for r in texts("sust", fold, f"task.data.requests.{i}")]
            for i, request in enumerate(data.requests)
        ]
        forget = folds[data.request or 0]
    oracle = [r for split in muse.oracle for r in texts("raw", split, "task.data.muse.oracle")]
    world_file = _read_world(data, "task.data.world")
    world, world_eval = world_splits(data, world_file, seed) if world_file else ([], [])
    knowmem = {split: qa("knowmem", name, ("question", "answer")) for split, name in KNOWMEM.items()}
    splits = {
        "forget": forget,
        "retain": texts("raw", muse.retain, "task.data.muse.retain"),
        "world": world,
        "forget_eval": texts("privleak", "forget", "task.data.records"),
        "retain_eval": texts("privleak", "retain", "task.data.records"),
        "world_eval": world_eval,
        "holdout": texts("privleak", "holdout", "task.data.records"),
        "verbmem": qa("verbmem", "forget", ("prompt", "gt")),
        **knowmem,
        "target_train": texts("raw", "forget", "task.data.records") + oracle + world,
        "oracle_train": oracle + world,
    }
    # a tiny model's tokenizer corpus without the requested fold: one tokenizer (and one target model) for
    # every fold — a chain's requests and a sweep over scal folds alike (the fold's texts are in raw/forget)
    splits["corpus"] = [r for name, split in splits.items() if name != "forget" for r in split]
    return splits


def _reader(data: LLMData, seed: int) -> Reader:
    """``(subset, split, key) → rows``: from the synthetic corpus, a local directory or a hub id;
    errors name ``key``."""
    if data.synthetic:
        from otu.llm.synthetic import generate_muse

        corpus = generate_muse(seed if data.synthetic_seed is None else data.synthetic_seed, data.muse.sizes)

        def generated(subset: str, split: str, key: str) -> list[dict[str, Any]]:
            if split not in corpus.get(subset, {}):
                raise DataError(
                    f"{key}: the synthetic MUSE corpus has no {subset}/{split} (splits: {sorted(corpus[subset])})"
                )
            return corpus[subset][split]

        return generated
    source = given(data.records, "task.data.records")
    local = Path(source).expanduser()

    def read(subset: str, split: str, key: str) -> list[dict[str, Any]]:
        files = [local / subset / f"{split}{suffix}" for suffix in SUFFIXES] if local.is_dir() else []
        for path in files:
            if path.exists():
                return [row if isinstance(row, dict) else {"text": row} for row in read_rows(path, key)]
        rows = read_split(source, subset, split, "task.data.records", key)
        if not rows:
            raise DataError(f"{key}: {subset}/{split} of {source} is empty")
        return rows

    return read


def _column(row: Any, name: str, key: str, i: int) -> str:
    value = row.get(name) if isinstance(row, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            f"{key}: row {i}: {name!r} must be a non-empty string "
            f"(got {sorted(row) if isinstance(row, dict) else row!r})"
        )
    return value


def chunk_texts(records: Sequence[Record], tokenizer, max_length: int) -> list[Record]:
    """Text records → chunks of ``max_length`` tokens, as open-unlearning's PretrainingDataset
    (src/data/pretraining.py:71-84): the texts joined by blank lines, tokenized without special
    tokens, cut every ``max_length`` tokens, each piece decoded (an empty last piece dropped); QA
    records pass unchanged, after the chunks."""
    texts = [r.answer for r in records if r.kind == "text"]
    if not texts:
        return list(records)
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode(ids[i : i + max_length]) for i in range(0, len(ids), max_length)]
    chunks = [Record(question="", answer=p, kind="text") for p in pieces if p.strip()]
    return chunks + [r for r in records if r.kind != "text"]


def chunk_splits(splits: Splits, tokenizer, max_length: int) -> Splits:
    """``splits`` with the text of every training split in token chunks (:func:`chunk_texts`)."""
    return {k: chunk_texts(v, tokenizer, max_length) if k in TEXT_SPLITS else v for k, v in splits.items()}

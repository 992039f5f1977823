"""ELUDe-format QA records: loading, checking, and the forget / retain / world / holdout splits.

A record is one question about one entity with its answer, a paraphrased answer and a list of
perturbed (false) answers; ``paraphrased_question`` and ``neighbour_of`` are optional. The forget set
is the target entity's records, the retain set its neighbour entities' records, the world set the
general-instruction file, and the holdout set (never trained, MIA non-members) the other entities.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from otu.errors import DataError, SpecError

REQUIRED = ("entity", "question", "answer", "paraphrased_answer", "perturbed_answer")
WORLD_REQUIRED = REQUIRED[1:]
SPLITS = ("forget", "retain", "world", "holdout")


@dataclass(frozen=True)
class Record:
    question: str
    answer: str
    paraphrased_answer: str
    perturbed_answer: tuple[str, ...]
    entity: str | None = None
    paraphrased_question: str | None = None
    neighbour_of: str | None = None

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["perturbed_answer"] = list(self.perturbed_answer)
        return row


Splits = dict[str, list[Record]]


def read_rows(path: Path, field: str) -> list[dict[str, Any]]:
    """Rows of a JSONL/JSON file, a Parquet file or a local HF ``datasets`` directory."""
    if not path.exists():
        raise DataError(f"{field}: file not found: {path}")
    try:
        if path.is_dir():
            return _read_hf_dir(path, field)
        if path.suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(path).to_dict(orient="records")
        if path.suffix == ".json":
            rows = json.loads(path.read_text())
            if not isinstance(rows, list):
                raise DataError(f"{field}: {path} must hold a JSON list of records")
            return rows
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (ValueError, OSError) as err:
        raise DataError(f"{field}: cannot read {path}: {err}") from None
    raise DataError(f"{field}: {path} is not .jsonl, .json, .parquet or a HF datasets directory")


def _read_hf_dir(path: Path, field: str) -> list[dict[str, Any]]:
    from datasets import Dataset, DatasetDict, load_from_disk

    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        if len(data) != 1:
            raise DataError(f"{field}: {path} holds splits {sorted(data)}; save one split")
        data = next(iter(data.values()))
    assert isinstance(data, Dataset)
    return list(data)


def parse_records(
    rows: Sequence[dict[str, Any]], field: str, required: Iterable[str]
) -> list[Record]:
    """Check required fields and types, row by row, and build :class:`Record` s."""
    if not rows:
        raise DataError(f"{field}: no records (the file is empty)")
    required = tuple(required)
    missing = [name for name in required if name not in rows[0]]
    if missing:
        raise DataError(
            f"{field}: records lack required field(s) {missing}; required: {list(required)} "
            f"(got {sorted(rows[0])})"
        )
    out = []
    for i, row in enumerate(rows):
        for name in required:
            value = row.get(name)
            if name == "perturbed_answer":
                if (
                    _is_list(value)
                    and len(value) > 0
                    and all(isinstance(v, str) and v for v in value)
                ):
                    continue
                raise DataError(
                    f"{field}: record {i}: perturbed_answer must be a non-empty list of strings (got {value!r})"
                )
            if not isinstance(value, str) or not value.strip():
                raise DataError(
                    f"{field}: record {i}: {name} must be a non-empty string (got {value!r})"
                )
        out.append(
            Record(
                question=row["question"],
                answer=row["answer"],
                paraphrased_answer=row["paraphrased_answer"],
                perturbed_answer=tuple(row["perturbed_answer"]),
                entity=_optional(row.get("entity")),
                paraphrased_question=_optional(row.get("paraphrased_question")),
                neighbour_of=_optional(row.get("neighbour_of")),
            )
        )
    return out


def _optional(value: Any) -> str | None:
    """An optional text field; empty strings and table nulls (None, NaN) read as absent."""
    return value if isinstance(value, str) and value.strip() else None


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray"


def make_splits(
    records: Sequence[Record],
    world: Sequence[Record],
    target: str,
    neighbours: Sequence[str] | str,
    holdout: Sequence[str] | str,
    source: str,
    retain_records: Sequence[Record] | None = None,
) -> Splits:
    """Split records by entity; every failure names the spec field and what the data holds.

    With ``retain_records`` (ELUDe's layout: neighbour QA in a file of its own, ``entity`` naming the
    target they neighbour) the retain set is that file's rows for the target.
    """
    entities = list(dict.fromkeys(r.entity for r in records))
    known = ", ".join(map(str, entities[:8])) + (" …" if len(entities) > 8 else "")
    if target not in entities:
        raise SpecError(
            f"task.data.target: entity {target!r} is not in {source}; entities there: {known}"
        )
    forget = [r for r in records if r.entity == target]

    if retain_records is not None:
        if neighbours != "auto":
            raise SpecError(
                "task.data.neighbours: give 'auto' with retain_records (its rows name the target)"
            )
        retain = [r for r in retain_records if r.entity == target]
        if not retain:
            raise DataError(
                f"task.data.retain_records: no record has entity {target!r} (empty retain set)"
            )
        retain_entities: list = []
    else:
        if neighbours == "auto":
            if not any(r.neighbour_of for r in records):
                raise SpecError(
                    f"task.data.neighbours: 'auto' needs a neighbour_of field in {source}; "
                    "list the neighbour entities"
                )
            retain_entities = list(
                dict.fromkeys(r.entity for r in records if r.neighbour_of == target)
            )
            if not retain_entities:
                raise DataError(
                    f"task.data.neighbours: no record in {source} has neighbour_of={target!r}"
                )
        else:
            _check_entities("task.data.neighbours", neighbours, entities, target, source, known)
            retain_entities = list(neighbours)
        retain = [r for r in records if r.entity in set(retain_entities)]

    if holdout == "auto":
        holdout_entities = [e for e in entities if e != target and e not in retain_entities]
        if not holdout_entities:
            raise DataError(
                f"task.data.holdout: 'auto' found no entity besides the target and its neighbours in "
                f"{source} (MIA needs never-trained held-out entities)"
            )
    else:
        _check_entities("task.data.holdout", holdout, entities, target, source, known)
        holdout_entities = list(holdout)
        overlap = sorted(set(holdout_entities) & set(retain_entities))
        if overlap:
            raise SpecError(
                f"task.data.holdout: entities {overlap} are also neighbours (retain set)"
            )
    return {
        "forget": forget,
        "retain": retain,
        "world": list(world),
        "holdout": [r for r in records if r.entity in set(holdout_entities)],
    }


def _check_entities(
    field: str, names: Sequence[str], entities: list, target: str, source: str, known: str
) -> None:
    if not names:
        raise SpecError(f"{field}: empty list; give entity names or 'auto'")
    absent = [n for n in names if n not in entities]
    if absent:
        raise SpecError(f"{field}: entities {absent} are not in {source}; entities there: {known}")
    if target in names:
        raise SpecError(f"{field}: contains the target entity {target!r}")


def write_splits(splits: Splits, path: Path) -> None:
    path.write_text(json.dumps({k: [r.to_json() for r in v] for k, v in splits.items()}))


def read_splits(path: Path) -> Splits:
    raw = json.loads(path.read_text())
    return {
        k: [Record(**{**r, "perturbed_answer": tuple(r["perturbed_answer"])}) for r in v]
        for k, v in raw.items()
    }


def load_splits(data: Any, seed: int) -> Splits:
    """The four splits named by a ``task.data`` section (:class:`otu.llm.spec.LLMData`)."""
    if data.synthetic:
        from otu.llm.synthetic import generate_entities

        gen = generate_entities(
            seed if data.synthetic_seed is None else data.synthetic_seed, data.sizes
        )
        records = parse_records(gen["records"], "task.data.synthetic", REQUIRED)
        world = parse_records(gen["world"], "task.data.synthetic", WORLD_REQUIRED)
        target = data.target or gen["targets"][0]
        source = "the synthetic entity set"
        retain_records = None
    else:
        records = _read(data.records, "task.data.records", REQUIRED)
        world = _read(data.world, "task.data.world", WORLD_REQUIRED)
        retain_records = _read(data.retain_records, "task.data.retain_records", REQUIRED)
        target = data.target
        source = data.records
    return make_splits(
        records, world, target, data.neighbours, data.holdout, source, retain_records
    )


def _read(path: str | None, field: str, required: Sequence[str]) -> list[Record] | None:
    return None if path is None else parse_records(read_rows(Path(path), field), field, required)

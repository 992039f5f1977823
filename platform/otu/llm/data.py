"""QA records as the field publishes them: loading, checking, and the training / evaluation splits.

A record is one question about one entity with its answer, a paraphrased answer and a list of
perturbed (false) answers; ``paraphrased_question`` and ``neighbour_of`` are optional, and rows of an
instruction file (``instruction``/``input``/``output``, e.g. Alpaca-GPT4) become records without
paraphrased / perturbed answers (no truth ratio). Three layouts (``task.data.layout``):

* ``records``: JSONL/JSON/Parquet files or a one-split ``datasets`` directory; the forget set is the
  target entity's records, the retain set its neighbours' (``neighbour_of`` or a ``retain_records``
  file), the world set the world file, the holdout set (MIA non-members) the other entities; a
  seeded ``eval_fraction`` of the retain and world records is held out for evaluation (world: unless
  a ``world_eval`` file evaluates it).
* ``elude``: ELUDe's ``forget_qa`` / ``retain_qa`` (``datasets`` directories or hub ids, with a
  configuration each where one source holds both) as published and as the OPT-OUT authors use them:
  forget_qa's only split ``train`` is forgotten and evaluated, retain_qa trains on ``train`` and is
  evaluated on ``test`` (``task.data.elude_splits``); world as in ``records``.
* ``tofu``: TOFU's configurations (forget01/05/10, retain90/95/99, the ``*_perturbed`` evaluation
  sets, real_authors / world_facts); the forget split is the request, so there is no entity.
* ``muse``: MUSE's text corpora (:mod:`otu.llm.muse`): text records, cut into token chunks once the
  tokenizer is known, and the criteria's own evaluation sets.

Training splits are ``forget``, ``retain``, ``world``; evaluation splits ``forget_eval``,
``retain_eval``, ``world_eval`` and ``holdout`` — retain and world evaluation items are never items
a retain term trains on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard, TypeVar

import torch

from otu.errors import DataError, SpecError
from otu.llm.spec import InstructionFields, LLMData

REQUIRED = ("entity", "question", "answer", "paraphrased_answer", "perturbed_answer")
WORLD_REQUIRED = REQUIRED[1:]
QA = ("question", "answer")
TRAIN = ("forget", "retain", "world")
EVAL = {"forget": "forget_eval", "retain": "retain_eval", "world": "world_eval"}

T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    question: str
    answer: str
    paraphrased_answer: str = ""
    perturbed_answer: tuple[str, ...] = ()
    """Empty for items without a truth ratio (instruction data, QA-only training splits)."""
    entity: str | None = None
    paraphrased_question: str | None = None
    neighbour_of: str | None = None
    kind: Literal["qa", "text"] = "qa"
    """``text``: a passage of raw text (MUSE's corpora), held in ``answer`` with an empty question —
    trained and scored on every token (:meth:`otu.llm.text.Encoder.records`)."""

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
    rows: Sequence[dict[str, Any]],
    field: str,
    required: Iterable[str],
    names: dict[str, str] | None = None,
) -> list[Record]:
    """Check required fields and types, row by row, and build :class:`Record` s; ``names`` maps a
    record field to its column (``task.data.fields``); a missing paraphrased answer is the answer."""
    if not rows:
        raise DataError(f"{field}: no records (the file is empty)")
    if names:
        columns = {v: k for k, v in names.items() if k != v}
        rows = [{columns.get(k, k): v for k, v in row.items()} for row in rows]
    required = tuple(required)
    missing = [name for name in required if name not in rows[0]]
    if missing:
        raise DataError(
            f"{field}: records lack required field(s) {missing}; required: {list(required)} (got {sorted(rows[0])})"
        )
    out = []
    for i, row in enumerate(rows):
        for name in required:
            value = row.get(name)
            if name == "perturbed_answer":
                if _is_list(value) and len(value) > 0 and all(isinstance(v, str) and v for v in value):
                    continue
                raise DataError(
                    f"{field}: record {i}: perturbed_answer must be a non-empty list of strings (got {value!r})"
                )
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{field}: record {i}: {name} must be a non-empty string (got {value!r})")
        perturbed = row.get("perturbed_answer")
        out.append(
            Record(
                question=row["question"],
                answer=row["answer"],
                paraphrased_answer=_optional(row.get("paraphrased_answer")) or row["answer"],
                perturbed_answer=tuple(perturbed) if _is_list(perturbed) else (),
                entity=_optional(row.get("entity")),
                paraphrased_question=_optional(row.get("paraphrased_question")),
                neighbour_of=_optional(row.get("neighbour_of")),
            )
        )
    return out


def _optional(value: Any) -> str | None:
    """An optional text field; empty strings and table nulls (None, NaN) read as absent."""
    return value if isinstance(value, str) and value.strip() else None


def _is_list(value: Any) -> TypeGuard[Sequence[Any]]:
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
        raise SpecError(f"task.data.target: entity {target!r} is not in {source}; entities there: {known}")
    forget = [r for r in records if r.entity == target]

    if retain_records is not None:
        if neighbours != "auto":
            raise SpecError("task.data.neighbours: give 'auto' with retain_records (its rows name the target)")
        retain = [r for r in retain_records if r.entity == target]
        if not retain:
            raise DataError(f"task.data.retain_records: no record has entity {target!r} (empty retain set)")
        retain_entities: list = []
    else:
        if neighbours == "auto":
            if not any(r.neighbour_of for r in records):
                raise SpecError(
                    f"task.data.neighbours: 'auto' needs a neighbour_of field in {source}; list the neighbour entities"
                )
            retain_entities = list(dict.fromkeys(r.entity for r in records if r.neighbour_of == target))
            if not retain_entities:
                raise DataError(f"task.data.neighbours: no record in {source} has neighbour_of={target!r}")
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
        overlap = sorted(map(str, set(holdout_entities) & set(retain_entities)))
        if overlap:
            raise SpecError(f"task.data.holdout: entities {overlap} are also neighbours (retain set)")
    return {
        "forget": forget,
        "retain": retain,
        "world": list(world),
        "holdout": [r for r in records if r.entity in set(holdout_entities)],
    }


def _check_entities(field: str, names: Sequence[str], entities: list, target: str, source: str, known: str) -> None:
    if not names:
        raise SpecError(f"{field}: empty list; give entity names or 'auto'")
    absent = [n for n in names if n not in entities]
    if absent:
        raise SpecError(f"{field}: entities {absent} are not in {source}; entities there: {known}")
    if target in names:
        raise SpecError(f"{field}: contains the target entity {target!r}")


def all_records(splits: Splits, names: Iterable[str]) -> list[Record]:
    """The question/answer pairs of ``names``' training and evaluation splits, each once (what a
    model should know)."""
    return unique_pairs([r for name in names for k in (name, EVAL[name]) for r in splits[k]])


def unique_pairs(records: Iterable[Record]) -> list[Record]:
    """``records`` with each (question, answer) pair once, first occurrence kept: an item and its
    ``*_perturbed`` evaluation row are one training pair."""
    first: dict[tuple[str, str], Record] = {}
    for r in records:
        first.setdefault((r.question, r.answer), r)
    return list(first.values())


def finetune_sets(splits: Splits) -> tuple[list[Record], list[Record]]:
    """(target, retain-only oracle) fine-tuning records: the layout's own (TOFU: ``full`` and
    ``retainNN``), else every forget / retain / world item and every retain / world item."""
    if "target_train" in splits:
        return splits["target_train"], splits["oracle_train"]
    return all_records(splits, ("forget", "retain", "world")), all_records(splits, ("retain", "world"))


def write_splits(splits: Splits, path: Path) -> None:
    path.write_text(json.dumps({k: [r.to_json() for r in v] for k, v in splits.items()}))


def read_splits(path: Path) -> Splits:
    raw = json.loads(path.read_text())
    return {k: [Record(**{**r, "perturbed_answer": tuple(r["perturbed_answer"])}) for r in v] for k, v in raw.items()}


def load_splits(data: LLMData, seed: int) -> Splits:
    """Training and evaluation splits named by a ``task.data`` section (:class:`otu.llm.spec.LLMData`)."""
    if data.layout == "elude":
        return _elude_splits(data, seed)
    if data.layout == "tofu":
        return _tofu_splits(data, seed)
    if data.layout == "muse":
        from otu.llm.muse import muse_splits

        return muse_splits(data, seed)
    if data.synthetic:
        from otu.llm.synthetic import generate_entities

        gen = generate_entities(seed if data.synthetic_seed is None else data.synthetic_seed, data.sizes)
        records = parse_records(gen["records"], "task.data.synthetic", REQUIRED)
        world = parse_records(gen["world"], "task.data.synthetic", WORLD_REQUIRED)
        target = data.target or gen["targets"][0]
        source = "the synthetic entity set"
        retain_records = None
    else:
        source = given(data.records, "task.data.records")
        records = given(_read(source, "task.data.records", REQUIRED, data.fields), "task.data.records")
        world = given(_read_world(data, "task.data.world"), "task.data.world")
        retain_records = _read(data.retain_records, "task.data.retain_records", REQUIRED, data.fields)
        target = data.target
    if data.requests is not None:  # request data.request of a chain (otu.llm.requests)
        from otu.llm.requests import request_splits

        world, world_eval = world_splits(data, world, seed + 1)
        return request_splits(records, world, world_eval, data, seed, source)
    splits = make_splits(
        records, world, given(target, "task.data.target"), data.neighbours, data.holdout, source, retain_records
    )
    retain, retain_eval = hold_out(splits["retain"], data.eval_fraction, seed, "task.data.retain")
    world, world_eval = world_splits(data, splits["world"], seed + 1)
    return {
        "forget": splits["forget"],
        "retain": retain,
        "world": world,
        "forget_eval": splits["forget"],
        "retain_eval": retain_eval,
        "world_eval": world_eval,
        "holdout": splits["holdout"],
    }


def given(value: T | None, key: str) -> T:
    """``value``, which this data layout requires (the spec's validators make it so)."""
    if value is None:
        raise SpecError(f"{key}: required for this task.data.layout")
    return value


def hold_out(records: Sequence[Record], fraction: float, seed: int, field: str) -> tuple[list[Record], list[Record]]:
    """A seeded split into (training, held-out) records, ``fraction`` held out (≥ 1 of each)."""
    if len(records) < 2:
        raise DataError(f"{field}: {len(records)} record(s); need at least 2 to hold some out for evaluation")
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = min(len(records) - 1, max(1, round(fraction * len(records))))
    held = set(order[:n_eval])
    return (
        [r for i, r in enumerate(records) if i not in held],
        [r for i, r in enumerate(records) if i in held],
    )


def _elude_splits(data: LLMData, seed: int) -> Splits:
    """ELUDe as published and as the OPT-OUT authors use it (dataset.py ``load_data``): the target's
    forget_qa rows of ``forget_train`` to forget and of ``forget_eval`` to evaluate (both ``train``,
    the only split), its retain_qa rows of ``retain_train`` / ``retain_eval``, the other entities'
    ``forget_eval`` rows as holdout (MIA non-members), world as :func:`world_splits`. With ``requests``:
    request ``request`` of the chain (:func:`otu.llm.requests.elude_request_splits`)."""
    names = data.elude_splits
    read: dict[tuple[str, str], list[Record]] = {}

    def rows(key: str, which: str, stage: str) -> list[Record]:
        source = given(getattr(data, key), f"task.data.{key}")
        config, split = getattr(names, f"{which}_config"), getattr(names, f"{which}_{stage}")
        if (which, split) not in read:
            prefix = f"task.data.elude_splits.{which}"
            raw = read_split(source, config, split, f"task.data.{key}", f"{prefix}_{stage}", f"{prefix}_config")
            read[which, split] = parse_records(raw, f"task.data.{key}", REQUIRED, data.fields)
        return read[which, split]

    source = given(data.records, "task.data.records")
    forget_train, forget_eval = rows("records", "forget", "train"), rows("records", "forget", "eval")
    retain_train = rows("retain_records", "retain", "train")
    retain_eval = rows("retain_records", "retain", "eval")
    world, world_eval = world_splits(data, given(_read_world(data, "task.data.world"), "task.data.world"), seed)
    if data.requests is not None:  # request data.request of a chain (otu.llm.requests)
        from otu.llm.requests import elude_request_splits

        published = {"forget": forget_train, "forget_eval": forget_eval, "retain": retain_train}
        return elude_request_splits(
            {**published, "retain_eval": retain_eval, "world": world, "world_eval": world_eval}, data, source
        )
    target = given(data.target, "task.data.target")
    train = make_splits(forget_train, world, target, "auto", "auto", source, retain_train)
    held = make_splits(forget_eval, world, target, "auto", data.holdout, source, retain_eval)
    return {
        "forget": train["forget"],
        "retain": train["retain"],
        "world": world,
        "forget_eval": held["forget"],
        "retain_eval": held["retain"],
        "world_eval": world_eval,
        "holdout": held["holdout"],
    }


def _tofu_splits(data: LLMData, seed: int) -> Splits:
    """TOFU as open-unlearning runs it: the target model is fine-tuned on the fictitious authors
    (``forgetNN`` + ``retainNN``, TOFU's ``full``), the oracle on ``retainNN``; the loop forgets
    ``forgetNN`` and retains the whole ``retainNN`` (``tofu.hold_out_retain_eval`` drops the items
    of ``retain_perturbed`` from the retain term instead); evaluation on ``{forget}_perturbed``,
    ``retain_perturbed``, ``real_authors_perturbed`` and ``world_facts_perturbed`` (never trained);
    MIA non-members from ``holdoutNN``; world training from ``task.data.world`` (none without it).
    With ``requests``: request ``request`` of the chain (:func:`otu.llm.requests.tofu_request_splits`)."""
    tofu, fields = data.tofu, data.fields
    names = None
    if data.requests is not None:  # checked before any configuration is read
        from otu.llm.requests import tofu_requests

        names = tofu_requests(data.requests, tofu)

    def read(name: str, key: str, required: Sequence[str] = QA) -> list[Record]:
        source = given(data.records, "task.data.records")
        raw = read_split(source, name, tofu.split, "task.data.records", key)
        return parse_records(raw, f"{key} ({name})", required, fields)

    def config(key: str, required: Sequence[str] = QA) -> list[Record]:
        return read(getattr(tofu, key), f"task.data.tofu.{key}", required)

    forget, retain_config = config("forget"), config("retain")
    retain_eval = config("retain_eval", WORLD_REQUIRED)
    evaluated = {r.question for r in retain_eval}
    retain = [r for r in retain_config if r.question not in evaluated] if tofu.hold_out_retain_eval else retain_config
    options = ("question", "answer", "perturbed_answer")
    real_authors, world_facts = config("real_authors", options), config("world_facts", options)
    splits = {
        "forget": forget,
        "retain": retain,
        "world": _read_world(data, "task.data.world") or [],
        "forget_eval": config("forget_eval", WORLD_REQUIRED),
        "retain_eval": retain_eval,
        "world_eval": real_authors + world_facts,
        "real_authors_eval": real_authors,
        "world_facts_eval": world_facts,
        "holdout": config("holdout"),
        "target_train": unique_pairs(forget + retain_config),
        "oracle_train": unique_pairs(retain_config),
    }
    if names is None:
        return splits
    from otu.llm.requests import tofu_request_splits

    return tofu_request_splits(splits, names, data.request or 0, read)


def read_split(
    source: str, config: str | None, split: str, field: str, split_field: str, config_field: str | None = None
) -> list[dict[str, Any]]:
    """Rows of ``split`` of a ``datasets`` source: a local directory saved with ``save_to_disk``
    (with ``config``: its sub-directory ``config``) or a hub id (``load_dataset(source, config)``);
    errors name ``split_field`` (and ``config_field`` for a missing configuration, default the same)."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    local = Path(source).expanduser()
    if local.is_dir():
        path = local / config if config else local
        if not path.is_dir():
            raise DataError(
                f"{config_field or split_field}: {local} has no {config!r} directory (configs there: "
                f"{sorted(p.name for p in local.iterdir() if p.is_dir())})"
            )
        try:
            data = load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as err:
            raise DataError(f"{field}: {path} is not a datasets directory: {err}") from None
        if isinstance(data, Dataset):  # TOFU configurations may be saved split-less
            if config is None:  # ELUDe: training and evaluation items must not mix
                raise DataError(
                    f"{split_field}: {path} holds one Dataset without splits; save a DatasetDict "
                    f"with the split {split!r}"
                )
            return list(data)
    else:
        try:
            data = load_dataset(source, config)
        except Exception as err:  # offline, unknown id or config: one cause for the user
            raise DataError(
                f"{field}: {source!r} (config {config}) is neither a local directory nor a hub "
                f"dataset that can be loaded: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ) from None
    assert isinstance(data, DatasetDict)
    if split not in data:
        raise DataError(
            f"{split_field}: split {split!r} is not in {source}{'/' + config if config else ''} "
            f"(splits there: {sorted(data)})"
        )
    return list(data[split])


def _read_world(data: LLMData, field: str) -> list[Record] | None:
    """The world training file (:func:`_world_file`); question and answer suffice when ``world_eval``
    evaluates world, otherwise its held-out part needs paraphrased / perturbed answers."""
    if data.world is None:
        return None
    return _world_file(data.world, field, data, QA if data.world_eval else WORLD_REQUIRED)


def world_splits(data: LLMData, world: list[Record], seed: int) -> tuple[list[Record], list[Record]]:
    """World (training, evaluation): all of ``world`` and the ``world_eval`` file when given (the OPT-OUT
    authors' Alpaca train / test files, dataset.py ``load_json_dataset``), else a seeded
    ``eval_fraction`` of ``world`` held out."""
    if data.world_eval is None:
        return hold_out(world, data.eval_fraction, seed, "task.data.world")
    return world, _world_file(data.world_eval, "task.data.world_eval", data, WORLD_REQUIRED)


def _world_file(path: str, field: str, data: LLMData, required: Sequence[str]) -> list[Record]:
    """QA records, or an instruction file (instruction / input / output); a row's non-empty ``input``
    follows its question after a blank line."""
    rows = read_rows(Path(path), field)
    names = data.instruction_fields
    question = data.fields.get("question", "question")
    if rows and names.instruction in rows[0] and question not in rows[0]:
        return parse_records([_instruction_qa(row, names, field) for row in rows], field, QA)
    if rows and names.input in rows[0]:
        rows = [{**r, question: _with_input(r[question], r, names)} if question in r else r for r in rows]
    return parse_records(rows, field, required, data.fields)


def _instruction_qa(row: dict[str, Any], names: InstructionFields, field: str) -> dict[str, Any]:
    if names.output not in row:
        raise DataError(
            f"{field}: instruction rows lack the {names.output!r} field (task.data.instruction_fields.output)"
        )
    return {"question": _with_input(row[names.instruction], row, names), "answer": row[names.output]}


def _with_input(question: Any, row: dict[str, Any], names: InstructionFields) -> Any:
    """``question + "\\n\\n" + input`` where the row has a non-empty ``input``, as the OPT-OUT authors
    prompt (dataset.py ``CustomFormatter.formatting_func``)."""
    context = _optional(row.get(names.input))
    return f"{question}\n\n{context}" if context and isinstance(question, str) else question


def _read(
    path: str | None, field: str, required: Sequence[str], names: dict[str, str] | None = None
) -> list[Record] | None:
    return None if path is None else parse_records(read_rows(Path(path), field), field, required, names)

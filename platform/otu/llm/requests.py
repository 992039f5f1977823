"""Deletion requests in sequence (``task.data.requests``): the splits of request k of a chain.

Layout records: every request names entities. The target model knows every requested entity, the
entities whose records name one of them in ``neighbour_of`` (the neighbours: the retain set of the
whole chain, ``eval_fraction`` held out to evaluate) and the world; the other entities are the MIA
holdout. Request k forgets its own entities' records (``forget``, evaluated apart as
``request_forget_eval``) and is evaluated on those of requests 0…k (``forget_eval``); its oracle is
fine-tuned on the target's records without requests 0…k. Every request of a chain has the same
tokenizer corpus (``corpus``) and the same target, so request k+1 can start from request k's
unlearned model (``task.model.start``).

Layout elude: the same on ELUDe's forget_qa entities (:func:`elude_request_splits`); layout tofu:
each request one of TOFU's nested forget configurations (:func:`tofu_request_splits`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from otu.errors import DataError, SpecError
from otu.llm.data import QA, WORLD_REQUIRED, Record, Splits, hold_out, unique_pairs
from otu.llm.spec import TOFU_FORGET, LLMData, Tofu, tofu_configs

Reader = Callable[[str, str, Sequence[str]], list[Record]]
"""``(configuration, key, required fields) → records`` of a TOFU source; errors name ``key``."""


def request_splits(
    records: Sequence[Record],
    world: Sequence[Record],
    world_eval: Sequence[Record],
    data: LLMData,
    seed: int,
    source: str,
) -> Splits:
    """The splits of request ``data.request`` (default 0) of ``data.requests`` (see the module). The
    neighbours' evaluation items (``retain_eval``) are ``eval_fraction`` of each neighbour's records
    (:func:`_per_neighbour_hold_out`), so every request's neighbours are evaluated and each keeps
    training items; one-request runs keep their single seeded draw over all retain records
    (:func:`otu.llm.data.hold_out`), as changing it would change every cached one-request split."""
    if data.holdout != "auto":  # as layout elude refuses it (otu.llm.spec.LLMData._requests_here)
        raise SpecError(
            "task.data.holdout: with requests the MIA holdout is every entity neither requested nor a "
            "neighbour (give auto, or leave it out)"
        )
    requests = data.requests or []
    k = data.request or 0
    entities = list(dict.fromkeys(r.entity for r in records))
    known = ", ".join(map(str, entities[:8])) + (" …" if len(entities) > 8 else "")
    for i, request in enumerate(requests):
        absent = [e for e in request if e not in entities]
        if absent:
            raise SpecError(f"task.data.requests.{i}: entities {absent} are not in {source}; entities there: {known}")
    requested = {e for request in requests for e in request}
    neighbours = list(dict.fromkeys(r.entity for r in records if r.neighbour_of in requested))
    neighbours = [e for e in neighbours if e not in requested]
    if not neighbours:
        raise DataError(
            f"task.data.requests: no record in {source} names a requested entity in neighbour_of (no retain set)"
        )
    holdout = [e for e in entities if e not in requested and e not in neighbours]
    if not holdout:
        raise DataError(
            f"task.data.requests: {source} has no entity besides the requested ones and their neighbours "
            "(MIA needs never-trained held-out entities)"
        )

    def of(names: Iterable[str | None]) -> list[Record]:
        chosen = set(names)
        return [r for r in records if r.entity in chosen]

    done = {e for request in requests[: k + 1] for e in request}
    retain, retain_eval = _per_neighbour_hold_out(of(neighbours), neighbours, data.eval_fraction, seed, source)
    target_train = unique_pairs([*of(requested), *of(neighbours), *world, *world_eval])
    return {
        "forget": of(requests[k]),
        "retain": retain,
        "world": list(world),
        "forget_eval": of(done),
        "request_forget_eval": of(requests[k]),
        "retain_eval": retain_eval,
        "world_eval": list(world_eval),
        "holdout": of(holdout),
        "target_train": target_train,
        "oracle_train": [r for r in target_train if r.entity not in done],
        "corpus": [*records, *world, *world_eval],
    }


def _per_neighbour_hold_out(
    records: Sequence[Record], neighbours: Sequence[str | None], fraction: float, seed: int, source: str
) -> tuple[list[Record], list[Record]]:
    """(retain, retain_eval): ``fraction`` of EACH neighbour's records held out (:func:`hold_out`: at
    least one held out and one kept), so every requested entity's neighbours are evaluated and every
    neighbour keeps training items. A neighbour with a single record is kept for training, unevaluated
    (it cannot be both). Neighbour ``e``'s draw is seeded by ``SeedSequence([seed, crc32(e)])``: the
    same under any chain that has ``e`` as a neighbour, and not the same positions for every neighbour
    (whose records share question templates)."""
    retain: list[Record] = []
    retain_eval: list[Record] = []
    for name in neighbours:
        own = [r for r in records if r.entity == name]
        if len(own) < 2:
            retain += own
            continue
        state = int(np.random.SeedSequence([seed, zlib.crc32(str(name).encode())]).generate_state(1)[0])
        kept, held = hold_out(own, fraction, state, "task.data.retain")
        retain += kept
        retain_eval += held
    if not retain_eval:
        raise DataError(
            f"task.data.requests: every neighbour in {source} has a single record (none to hold out for evaluation)"
        )
    return retain, retain_eval


def _known(entities: Sequence[str | None]) -> str:
    return ", ".join(map(str, entities[:8])) + (" …" if len(entities) > 8 else "")


def elude_request_splits(published: Splits, data: LLMData, source: str) -> Splits:
    """Request ``data.request`` of a chain on ELUDe (``published``: the forget_qa rows of
    ``forget_train`` (``forget``) and ``forget_eval``, the retain_qa rows of ``retain_train``
    (``retain``) and ``retain_eval``, world and world_eval, as :func:`otu.llm.data._elude_splits`
    reads them). As the OPT-OUT authors split one entity (brightjade/Opt-Out dataset.py:63-67, 82 train;
    18-21 evaluate), for every requested entity at once: request k forgets its entities'
    ``forget_train`` rows and is evaluated on the ``forget_eval`` rows of requests 0…k (its own apart,
    ``request_forget_eval``); the retain term trains on the retain_qa rows of every requested entity
    (their ``retain_eval`` rows evaluate it); the MIA holdout is the ``forget_eval`` rows of the entities
    no request names. The target is fine-tuned on all of these but the holdout (as the one-request
    path, :func:`otu.llm.data.finetune_sets`), request k's oracle on the same less requests 0…k."""
    requests = data.requests or []
    k = data.request or 0
    entities = list(dict.fromkeys(r.entity for r in published["forget"]))
    for i, request in enumerate(requests):
        absent = [e for e in request if e not in entities]
        if absent:
            raise SpecError(
                f"task.data.requests.{i}: entities {absent} are not in {source}; entities there: {_known(entities)}"
            )
    requested = [e for request in requests for e in request]
    for entity in requested:
        if not any(r.entity == entity for r in published["retain"]):
            raise DataError(f"task.data.retain_records: no record has entity {entity!r} (empty retain set)")
    holdout = [r for r in published["forget_eval"] if r.entity not in set(requested)]
    if not holdout:
        raise DataError(
            f"task.data.requests: every entity of {source} is requested (MIA needs never-trained held-out entities)"
        )

    def of(split: str, names: Iterable[str]) -> list[Record]:
        chosen = set(names)
        return [r for r in published[split] if r.entity in chosen]

    done, own = [e for request in requests[: k + 1] for e in request], requests[k]
    retain, retain_eval = of("retain", requested), of("retain_eval", requested)
    world, world_eval = published["world"], published["world_eval"]
    target_train = unique_pairs(
        [*of("forget", requested), *of("forget_eval", requested), *retain, *retain_eval, *world, *world_eval]
    )
    deleted = {(r.question, r.answer) for r in of("forget", done) + of("forget_eval", done)}
    return {
        "forget": of("forget", own),
        "retain": retain,
        "world": list(world),
        "forget_eval": of("forget_eval", done),
        "request_forget_eval": of("forget_eval", own),
        "retain_eval": retain_eval,
        "world_eval": list(world_eval),
        "holdout": holdout,
        "target_train": target_train,
        "oracle_train": [r for r in target_train if (r.question, r.answer) not in deleted],
        "corpus": [r for split in published.values() for r in split],
    }


def tofu_requests(requests: Sequence[Sequence[str]], tofu: Tofu) -> list[str]:
    """The configuration names of TOFU requests: each request one of :data:`otu.llm.spec.TOFU_FORGET`,
    in increasing order (they are nested); ``tofu`` must be the last request's (the spec makes it so)."""
    names: list[str] = []
    for i, request in enumerate(requests):
        if len(request) != 1 or request[0] not in TOFU_FORGET:
            raise SpecError(
                f"task.data.requests.{i}: a TOFU request names one forget configuration of "
                f"{', '.join(TOFU_FORGET)} (got {list(request)})"
            )
        if names and TOFU_FORGET.index(request[0]) <= TOFU_FORGET.index(names[-1]):
            raise SpecError(
                f"task.data.requests.{i}: {request[0]} after {names[-1]}; TOFU's forget configurations are nested "
                f"({' ⊂ '.join(TOFU_FORGET)}): give them in increasing order"
            )
        names.append(request[0])
    last = tofu_configs(names[-1])
    if any(getattr(tofu, key) != value for key, value in last.items()):
        raise SpecError(f"task.data.tofu: must be the last request's configuration ({last}) with requests")
    return names


def tofu_request_splits(whole: Splits, names: Sequence[str], k: int, read: Reader) -> Splits:
    """Request ``k`` of a TOFU chain of forget configurations ``names`` (``whole``: the last
    configuration's splits, :func:`otu.llm.data._tofu_splits`). TOFU publishes ``retain{100-NN}`` and
    ``holdoutNN`` for each ``forgetNN`` (open-unlearning scripts/tofu_finetune.sh:14-18,
    configs/experiment/unlearn/tofu/default.yaml:15-17), and its forget sets are nested, so request k
    forgets the questions ``names[k]`` adds to ``names[k-1]`` (``request_forget_eval``: their
    ``forgetNN_perturbed`` rows) and is evaluated on the whole ``{names[k]}_perturbed``, its MIA
    holdout ``holdoutNN``, its oracle fine-tuned on ``retain{100-NN}`` (the model trained without
    requests 0…k). The target (``full``: the last configuration's forget + retain sets), the loop's
    retain set (the last's retain set, which no request names) and world are the chain's own."""
    keys = [f"task.data.requests.{i}" for i in range(len(names))]
    configs = [tofu_configs(name) for name in names]
    forgets = [read(name, key, QA) for name, key in zip(names, keys, strict=True)]
    questions = [{r.question for r in forget} for forget in forgets]
    for i in range(1, len(names)):
        missing = sorted(questions[i - 1] - questions[i])
        if missing:
            raise DataError(
                f"{keys[i]}: {names[i]} lacks {len(missing)} question(s) of {names[i - 1]}, the request before "
                f"(TOFU's forget sets are nested), e.g. {missing[0]!r}"
            )
    evals = [read(c["forget_eval"], key, WORLD_REQUIRED) for c, key in zip(configs, keys, strict=True)]
    holdouts = [read(c["holdout"], key, QA) for c, key in zip(configs, keys, strict=True)]
    oracle = read(configs[k]["retain"], keys[k], QA)
    kept = sorted(questions[k] & {r.question for r in oracle})
    if kept:
        raise DataError(
            f"{keys[k]}: {configs[k]['retain']} holds {len(kept)} question(s) of {names[k]} (the oracle must be "
            f"trained without requests 1..{k + 1}), e.g. {kept[0]!r}"
        )
    added = questions[k] - (questions[k - 1] if k else set())
    own = [r for r in evals[k] if r.question in added]
    if not own:
        raise DataError(f"{keys[k]}: {configs[k]['forget_eval']} has no row for the questions {names[k]} adds")
    return {
        **whole,
        "forget": [r for r in forgets[k] if r.question in added],
        "forget_eval": evals[k],
        "request_forget_eval": own,
        "holdout": holdouts[k],
        "oracle_train": unique_pairs(oracle),
        "corpus": [
            *whole["target_train"],
            *whole["world"],
            *whole["retain_eval"],
            *whole["world_eval"],
            *(r for split in evals + holdouts for r in split),
        ],
    }

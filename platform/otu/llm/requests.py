"""Deletion requests in sequence (``task.data.requests``): the splits of request k of a chain.

Layout records: every request names entities. The target model knows every requested entity, the
entities whose records name one of them in ``neighbour_of`` (the neighbours: the retain set of the
whole chain, ``eval_fraction`` held out to evaluate) and the world; the other entities are the MIA
holdout. Request k forgets its own entities' records (``forget``, evaluated apart as
``request_forget_eval``) and is evaluated on those of requests 0…k (``forget_eval``); its oracle is
fine-tuned on the target's records without requests 0…k. Every request of a chain has the same
tokenizer corpus (``corpus``) and the same target, so request k+1 can start from request k's
unlearned model (``task.model.start``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from otu.errors import DataError, SpecError
from otu.llm.data import Record, Splits, hold_out, unique_pairs
from otu.llm.spec import LLMData


def request_splits(
    records: Sequence[Record],
    world: Sequence[Record],
    world_eval: Sequence[Record],
    data: LLMData,
    seed: int,
    source: str,
) -> Splits:
    """The splits of request ``data.request`` (default 0) of ``data.requests`` (see the module)."""
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
    retain, retain_eval = hold_out(of(neighbours), data.eval_fraction, seed, "task.data.retain")
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

"""QA records → token tensors: prompt + answer sequences with answer-only labels, and prompt batches.

A training/scoring sequence is ``tokens(prompt(question)) + tokens(" " + answer) + [eos]``; labels
are -100 on the prompt, so losses and probabilities are over answer tokens (eos included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE = -100


@dataclass
class Batch:
    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device)
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class Encoder:
    """Encodes questions and answers with one tokenizer and one prompt template."""

    def __init__(self, tokenizer, prompt: str, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_length = max_length
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token")
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )

    def prompt_ids(self, question: str) -> list[int]:
        return self.tokenizer(self.prompt.format(question=question), add_special_tokens=True)[
            "input_ids"
        ]

    def answer_ids(self, answer: str) -> list[int]:
        ids = self.tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id]

    def pair(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """(input ids, labels) truncated to ``max_length`` (the answer keeps at least one token)."""
        prompt, answer_ids = self.prompt_ids(question), self.answer_ids(answer)
        prompt = prompt[-max(1, self.max_length - len(answer_ids)) :]
        ids = (prompt + answer_ids)[: self.max_length]
        labels = ([IGNORE] * len(prompt) + answer_ids)[: self.max_length]
        return ids, labels

    def batch(self, questions: Sequence[str], answers: Sequence[str]) -> Batch:
        """Right-padded sequences with answer-only labels."""
        pairs = [self.pair(q, a) for q, a in zip(questions, answers, strict=True)]
        width = max(len(ids) for ids, _ in pairs)
        input_ids = torch.full((len(pairs), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(pairs):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(ids)] = 1
        return Batch(input_ids, mask, labels)

    def prompts(self, questions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Left-padded prompt ids and attention mask, for batched generation."""
        seqs = [self.prompt_ids(q)[-self.max_length :] for q in questions]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
        return ids, mask

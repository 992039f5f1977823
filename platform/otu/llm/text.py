"""QA records → token tensors: prompt + answer sequences with answer-only labels, and prompt batches.

With a chat template (the tokenizer's, when it has one) the prompt is
``apply_chat_template([system?, user: question], add_generation_prompt=True, date_string?)`` and the
answer is the rest of ``apply_chat_template([system?, user: question, assistant: answer])`` (the
assistant turn with its end-of-turn tokens), as open-unlearning's ``preprocess_chat_instance``
(src/data/utils.py:51-70). Without one the prompt is ``template.format(question=...)`` (with the tokenizer's special
tokens) and the answer is ``tokens(answer) + [eos]``: no space is inserted; the template decides.
Labels are -100 on the prompt, so losses and probabilities are over answer tokens only.

A text record (``Record.kind == "text"``, MUSE's corpora) has no prompt: its ids are
``tokenizer(text, add_special_tokens=True)`` cut to ``max_length`` tokens after the special prefix (BOS)
and every token after the first is a label, as open-unlearning's ``preprocess_pretraining_instance``
with an empty prefix (src/data/utils.py:143-190).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from otu.llm.data import Record

IGNORE = -100
PROBE = ("Who wrote the probe?", "The probe was written by otu.")


class TemplateError(ValueError):
    """The tokenizer's chat template cannot carry a question/answer pair."""


@dataclass
class Batch:
    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


class Encoder:
    """Encodes questions and answers with one tokenizer and one prompt format.

    ``chat``: use the tokenizer's chat template (None: when it has one), else ``prompt``; ``system`` and
    ``date_string`` are the chat's system message and the template's date variable (None: none).
    """

    def __init__(
        self,
        tokenizer,
        prompt: str,
        max_length: int,
        chat: bool | None = None,
        system: str | None = None,
        date_string: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_length = max_length
        self.system = [{"role": "system", "content": system}] if system else []
        self.template_vars = {"date_string": date_string} if date_string is not None else {}
        self.chat = has_chat_template(tokenizer) if chat is None else chat
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token")
        if self.chat and not has_chat_template(tokenizer):
            raise TemplateError("the tokenizer has no chat template")
        self.text_prefix = len(tokenizer("", add_special_tokens=True)["input_ids"])
        """Special tokens a raw text starts with (BOS)."""
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.chat:
            self._check_chat_template()

    def _chat_texts(self, question: str, answer: str) -> tuple[str, str]:
        """(prompt text, answer text): the chat with the generation prompt, and what the answer adds."""
        user = [*self.system, {"role": "user", "content": question}]
        render = self.tokenizer.apply_chat_template
        prompt = render(user, tokenize=False, add_generation_prompt=True, **self.template_vars)
        full = render([*user, {"role": "assistant", "content": answer}], tokenize=False, **self.template_vars)
        if not full.startswith(prompt):
            raise TemplateError("the chat template's assistant turn does not extend its generation prompt")
        return prompt, full[len(prompt) :]

    def _check_chat_template(self) -> None:
        question, answer = PROBE
        prompt, rest = self._chat_texts(question, answer)
        if question not in prompt:
            raise TemplateError("the chat template drops the user's question")
        if answer not in rest:
            raise TemplateError(f"the chat template drops the assistant's answer (renders {rest!r})")

    def prompt_ids(self, question: str) -> list[int]:
        if self.chat:
            text = self._chat_texts(question, "")[0]
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(self.prompt.format(question=question), add_special_tokens=True)["input_ids"]

    def answer_ids(self, question: str, answer: str) -> list[int]:
        if self.chat:
            rest = self._chat_texts(question, answer.strip())[1]
            return self.tokenizer(rest, add_special_tokens=False)["input_ids"]
        ids = self.tokenizer(answer.strip(), add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id]

    def pair(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """(input ids, labels) truncated to ``max_length`` (the answer keeps at least one token)."""
        prompt, answer_ids = self.prompt_ids(question), self.answer_ids(question, answer)
        prompt = prompt[-max(1, self.max_length - len(answer_ids)) :]
        ids = (prompt + answer_ids)[: self.max_length]
        labels = ([IGNORE] * len(prompt) + answer_ids)[: self.max_length]
        return ids, labels

    def text(self, text: str) -> tuple[list[int], list[int]]:
        """(input ids, labels) of a raw-text passage: the special prefix (BOS) and at most
        ``max_length`` text tokens, every token after the first a label."""
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"][: self.text_prefix + self.max_length]
        return ids, [IGNORE, *ids[1:]]

    def batch(self, questions: Sequence[str], answers: Sequence[str]) -> Batch:
        """Right-padded sequences with answer-only labels."""
        return self._padded([self.pair(q, a) for q, a in zip(questions, answers, strict=True)])

    def records(self, records: Sequence[Record], answers: Sequence[str] | None = None) -> Batch:
        """Right-padded sequences of QA and text records by kind; ``answers`` replace the records' own
        (a text record's replacement is its text)."""
        texts = answers if answers is not None else [r.answer for r in records]
        return self._padded(
            [
                self.text(a) if r.kind == "text" else self.pair(r.question, a)
                for r, a in zip(records, texts, strict=True)
            ]
        )

    def texts(self, texts: Sequence[str]) -> Batch:
        """Right-padded raw-text passages (:meth:`text`)."""
        return self._padded([self.text(t) for t in texts])

    def _padded(self, pairs: list[tuple[list[int], list[int]]]) -> Batch:
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
        return self.left_padded([self.prompt_ids(q)[-self.max_length :] for q in questions])

    def left_padded(self, seqs: Sequence[list[int]]) -> tuple[Tensor, Tensor]:
        """Left-padded token-id sequences and their attention mask."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
        return ids, mask

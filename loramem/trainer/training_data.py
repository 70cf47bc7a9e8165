"""Turns a topic's stored knowledge into training examples and recall probes.

QA pairs are formatted exactly as /generate formats a question (the chat template), and the loss
covers only the answer and its end-of-turn token. Texts are split into chunks and learned as plain
language modelling, beside what a generator wrote from them (see `augmentation`): QA pairs
(`augment` "qa" and "mix") and summaries and rewrites ("mix"), the paper's best recipe, and
recitals: each name of a text asked about openly, answered by its sentences (option `recite`).

Recall is measured on probes: a QA pair's own question; for a text, the questions a generator held
out of training (the fact asked in other words), or, when it wrote none, the completion of a
sentence the model was taught.

What was generated from a text also carries its source passage for the teacher of context
distillation (option `objective`): a question is read with the passage in the prompt, a rewrite or
summary after it, and each chunk of the text after the chunk before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loramem.core.prompting import answer_ids, context_block, question_ids, with_context
from loramem.core.text import pack_sentences, split_sentences, text_passages
from loramem.trainer.augmentation import GeneratedItem
from loramem.trainer.batching import IGNORE_INDEX, TrainingExample

MAX_CHUNK_TOKENS = 192


@dataclass(frozen=True)
class Knowledge:
    """A stored document, as the trainer needs it."""

    question: str | None = None
    answer: str | None = None
    text: str | None = None
    # What a generator wrote from this text.
    generated: tuple[GeneratedItem, ...] = ()
    # How many names, numbers and dates of the text no kept question asks about.
    unasked: int = 0


@dataclass(frozen=True)
class RecallProbe:
    prompt_ids: list[int]
    expected: str


@dataclass(frozen=True)
class TrainingSet:
    examples: list[TrainingExample]
    # What recall is measured on (held-out questions where there are any).
    probes: list[RecallProbe]
    # Generated questions that were trained on: recall on them, beside held-out recall, shows
    # how much of the gap is the wording.
    trained_probes: list[RecallProbe]
    # Things the texts state that no probe checks (see `augmentation.coverage`).
    unasked: int = 0

    def recall(self, answered: float) -> float:
        """The recall of the knowledge from the share of probes answered: each unasked thing
        counts as one more probe, failed, since nothing shows that it was learned."""
        checked = len(self.probes) + self.unasked
        return answered * len(self.probes) / checked if checked else 0.0

    @property
    def tokens(self) -> int:
        return sum(len(example.input_ids) for example in self.examples)


def build_training_set(
    tokenizer: Any, knowledge: Sequence[Knowledge], augment: str = "none"
) -> TrainingSet:
    examples: list[TrainingExample] = []
    probes: list[RecallProbe] = []
    trained_probes: list[RecallProbe] = []

    def add_qa(
        question: str,
        answer: str,
        context: str | None = None,
        source: str | None = None,
        exact: bool = True,
    ) -> RecallProbe:
        """`context` is in the prompt; `source` only in the distillation teacher's."""
        prompt = question_ids(tokenizer, with_context(context, question))
        answer_tokens = answer_ids(tokenizer, answer)
        teacher = (
            None
            if source is None
            else question_ids(tokenizer, with_context(context_block([source]), question))
            + answer_tokens
        )
        examples.append(
            TrainingExample(
                prompt + answer_tokens,
                [IGNORE_INDEX] * len(prompt) + answer_tokens,
                teacher,
                must_be_exact=exact,
            )
        )
        return RecallProbe(prompt, answer)

    def add_text(text: str, source: str | None = None) -> list[RecallProbe]:
        """Each chunk's teacher reads `source` first, or else the chunk before it (the first
        chunk of a text has nothing to be distilled from)."""
        completions = []
        before = source
        for chunk in chunk_text(tokenizer, text):
            body = _plain_ids(tokenizer, chunk)
            ids = _bos(tokenizer) + body
            teacher = None if before is None else _text_ids(tokenizer, before + "\n\n") + body
            examples.append(TrainingExample(ids, list(ids), teacher))
            completions.extend(_completion_probes(tokenizer, chunk))
            before = source if source is not None else chunk
        return completions

    for item in knowledge:
        if item.question is not None and item.answer is not None:
            probes.append(add_qa(item.question, item.answer))
            continue
        if not item.text:
            continue
        completions = add_text(item.text)
        generated = [g for g in item.generated if augment != "none" and g.rejected is None]
        held_out, trained = [], []
        # "mix" also teaches each question with the passage it was read from in the prompt, as
        # modes rag and hybrid ask it: without that, an adapter asked with notes misreads them.
        passages = text_passages(item.text)
        for g in generated:
            if g.kind == "qa" and g.question and g.answer:
                if g.held_out:
                    held_out.append(RecallProbe(question_ids(tokenizer, g.question), g.answer))
                else:
                    passage = _passage_of(g, passages)
                    trained.append(add_qa(g.question, g.answer, source=passage))
                    if augment == "mix":
                        add_qa(g.question, g.answer, context_block([passage]))
            elif g.kind == "recital" and g.question and g.answer:
                add_qa(g.question, g.answer, source=g.source, exact=False)
            elif g.text and augment == "mix":
                add_text(g.text, source=_passage_of(g, passages))
        trained_probes.extend(trained)
        probes.extend(held_out or trained or completions)
    unasked = sum(item.unasked for item in knowledge)
    return TrainingSet(examples, probes, trained_probes, unasked)


def qa_example_tokens(tokenizer: Any, question: str, answer: str) -> int:
    """How many tokens the example that a QA pair trains as has."""
    return len(question_ids(tokenizer, question)) + len(answer_ids(tokenizer, answer))


def _passage_of(item: GeneratedItem, passages: list[str]) -> str:
    """The passage that holds the sentence the item was read from (what retrieval finds for
    it); the text's first passage when the item names none."""
    source = " ".join((item.source or "").split())
    return next((p for p in passages if source and source in " ".join(p.split())), passages[0])


def _bos(tokenizer: Any) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _plain_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    return _bos(tokenizer) + _plain_ids(tokenizer, text)


def chunk_text(tokenizer: Any, text: str, max_tokens: int = MAX_CHUNK_TOKENS) -> list[str]:
    """Whole sentences packed into chunks of at most `max_tokens` (a long sentence stands alone)."""
    return pack_sentences(
        text,
        lambda sentence: len(tokenizer(sentence, add_special_tokens=False)["input_ids"]),
        max_tokens,
    )


def _completion_probes(tokenizer: Any, chunk: str) -> list[RecallProbe]:
    """For each sentence of six words or more: its first part as prompt, the rest as expected."""
    probes = []
    for sentence in split_sentences(chunk):
        words = sentence.split()
        if len(words) < 6:
            continue
        cut = max(3, (len(words) * 3) // 5)
        expected = " ".join(words[cut : cut + 4])
        probes.append(RecallProbe(_text_ids(tokenizer, " ".join(words[:cut])), expected))
    return probes

"""Step one of a job: the topic's knowledge, loaded from the registry with what a generator wrote
from each text. Texts with nothing written yet (new ones) go to the generator now; what it writes
is checked, completed with recitals, and kept with the topic."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch
from sqlalchemy import select

from loramem.core.options import TrainingOptions
from loramem.core.prefill import prefill
from loramem.core.prompting import answer_ids, context_block, question_ids, with_context
from loramem.core.registry import queue
from loramem.core.registry.models import Document, GeneratedRecord
from loramem.trainer.augmentation import (
    DataGenerator,
    EndpointGenerator,
    GeneratedItem,
    ReadBack,
    RuleBasedGenerator,
    ScoreAnswers,
    ServedModelGenerator,
    check_items,
    generate_with_fallback,
    recitals,
    unasked_things,
)
from loramem.trainer.job import RunningJob
from loramem.trainer.modules import StoredDocument
from loramem.trainer.recall import greedy_replies
from loramem.trainer.training_data import Knowledge

log = logging.getLogger("loramem.worker")


class KnowledgeLoader:
    def __init__(self, running: RunningJob) -> None:
        self.running = running
        self.settings = running.settings
        self.db = running.db
        self.job = running.claimed

    def load(self, options: TrainingOptions, model: Any, tokenizer: Any) -> list[StoredDocument]:
        """The topic's documents, each with the items written from it."""
        job = self.job
        with self.db.session() as session:
            documents = session.scalars(
                select(Document).where(Document.topic_id == job.topic_id).order_by(Document.id)
            ).all()
            written: dict[int, list[GeneratedRecord]] = {}
            for row in session.scalars(
                select(GeneratedRecord)
                .where(GeneratedRecord.topic_id == job.topic_id)
                .order_by(GeneratedRecord.id)
            ):
                written.setdefault(row.document_id, []).append(row)
            session.expunge_all()
        new_texts = [d for d in documents if d.text and d.id not in written]
        if options.augment != "none" and new_texts:
            written.update(self._augment(options, new_texts, model, tokenizer))
        return [
            StoredDocument(
                d.id,
                d.job_id,
                d.module,
                Knowledge(
                    d.question,
                    d.answer,
                    d.text,
                    tuple(
                        GeneratedItem(
                            r.kind,  # type: ignore[arg-type]
                            r.question,
                            r.answer,
                            r.text,
                            r.held_out,
                            r.source,
                            r.rejected,
                        )
                        for r in written.get(d.id, [])
                    ),
                ),
            )
            for d in documents
        ]

    def _augment(
        self, options: TrainingOptions, texts: list[Document], model: Any, tokenizer: Any
    ) -> dict[int, list[GeneratedRecord]]:
        job = self.job
        generator = self._generator(
            options.generator or self.settings.augment_generator, model, tokenizer
        )
        rows: dict[int, list[GeneratedRecord]] = {}
        fallbacks: list[str] = []
        unusable: list[int] = []
        read_back = base_model_reader(model, tokenizer)
        score_answers = base_model_scorer(model, tokenizer)
        for document in texts:
            self.running.check_stop()
            assert document.text is not None
            generation = generate_with_fallback(generator, document.text)
            if generation.fallback_reason:
                fallbacks.append(generation.fallback_reason)
            checked = check_items(generation.items, document.text, read_back, score_answers)
            if options.recite:
                checked += recitals(document.text, checked)
            if not any(item.kind == "qa" and item.rejected is None for item in checked):
                unusable.append(document.id)
            rows[document.id] = [
                GeneratedRecord(
                    topic_id=job.topic_id,
                    document_id=document.id,
                    job_id=job.id,
                    generator=generation.generator,
                    kind=item.kind,
                    question=item.question,
                    answer=item.answer,
                    text=item.text,
                    held_out=item.held_out,
                    source=item.source,
                    rejected=item.rejected,
                )
                for item in checked
            ]
        items = [row for document_rows in rows.values() for row in document_rows]
        kept = sum(row.rejected is None for row in items)
        recited = sum(row.kind == "recital" for row in items)
        queue.store_generated(
            self.db,
            job.id,
            self.running.worker_id,
            items,
            generator=generator.name,
            texts=len(texts),
            generated=len(items),
            kept=kept,
            rejected=len(items) - kept,
            # Recitals among the kept items.
            recited=recited,
            fallbacks=len(fallbacks),
            fallback_reason=fallbacks[0] if fallbacks else None,
            # Texts learned as raw text alone: no question about them passed its check.
            texts_without_questions=unusable,
        )
        log.info(
            "job %s augmented %d texts into %d items (%d kept) with %s (%d fell back to rules%s)",
            job.id,
            len(texts),
            len(items),
            kept,
            generator.name,
            len(fallbacks),
            f": {fallbacks[0]}" if fallbacks else "",
        )
        return rows

    def _generator(self, name: str, model: Any, tokenizer: Any) -> DataGenerator:
        if name == "model":
            return ServedModelGenerator(model, tokenizer)
        if name == "endpoint" and self.settings.augment_endpoint_url:
            return EndpointGenerator(
                self.settings.augment_endpoint_url,
                self.settings.augment_endpoint_model,
                self.settings.augment_endpoint_api_key,
                self.settings.augment_endpoint_timeout,
            )
        return RuleBasedGenerator()


def counting_unasked(knowledge: Knowledge) -> Knowledge:
    """The knowledge with its count of unasked things: parsed only for the modules a job
    trains, not for every document of the topic."""
    if not knowledge.text:
        return knowledge
    unasked = unasked_things(knowledge.text, knowledge.generated)
    return dataclasses.replace(knowledge, unasked=len(unasked))


# Rows (a candidate answer after its prompt) scored in one pass. With 48 scored and 32 read back
# at a time (`greedy_replies` reads 16), the checks of a 260-word article peaked 1.2 GB above the
# loaded model (their KV caches and the answers' logits; 0.77 GB with 16 and 16) and set the
# job's peak.
SCORED_ROWS = 16


def base_model_scorer(model: Any, tokenizer: Any) -> ScoreAnswers:
    """The base model's mean log-probability of each candidate answer, asked as in
    `base_model_reader`: every candidate of every request after its prompt, as rows of batches
    of SCORED_ROWS, a prompt (and a passage that several questions share) read once in each
    batch that holds its rows (`prefill`)."""

    @torch.inference_mode()
    def score(requests: Sequence[tuple[str, str, Sequence[str]]]) -> list[list[float]]:
        rows: list[tuple[list[int], list[int]]] = []
        for passage, question, candidates in requests:
            prompt = question_ids(
                tokenizer, with_context(context_block([passage] if passage else []), question)
            )
            rows.extend((prompt, answer_ids(tokenizer, candidate)) for candidate in candidates)
        means: list[float] = []
        for start in range(0, len(rows), SCORED_ROWS):
            chunk = rows[start : start + SCORED_ROWS]
            keep = max(len(answer) for _, answer in chunk) + 1
            logits = prefill(
                model,
                [prompt + answer for prompt, answer in chunk],
                tokenizer.pad_token_id,
                keep=keep,
                shareable=[len(prompt) - 1 for prompt, _ in chunk],
            ).logits.float()
            normalizers = logits.logsumexp(-1)
            for row, (_, answer) in enumerate(chunk):
                # A row's answer is its last tokens; each is predicted at the position before.
                span = slice(keep - 1 - len(answer), keep - 1)
                picked = logits[row, span].gather(
                    1, torch.tensor(answer)[:, None].to(logits.device)
                )
                means.append(float((picked[:, 0] - normalizers[row, span]).mean()))
        scores, taken = [], 0
        for _, _, candidates in requests:
            scores.append(means[taken : taken + len(candidates)])
            taken += len(candidates)
        return scores

    return score


def base_model_reader(model: Any, tokenizer: Any) -> ReadBack:
    """The base model answering each question with its passage in the prompt, as mode rag
    asks it: the round trip that checks a generated question."""

    def read(pairs: Any) -> list[str]:
        requests = [
            (question_ids(tokenizer, with_context(context_block([passage]), question)), 32)
            for passage, question in pairs
        ]
        return greedy_replies(model, tokenizer, requests)

    return read

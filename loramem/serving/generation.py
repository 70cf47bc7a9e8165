"""Generating: a request is admitted, planned, and run by the engine; its place is given back when
its last output has been read (or it was abandoned).

`start` is what every protocol calls. Composition by confidence runs each candidate module as a
row of the same batches and keeps the answer the model was surest of.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator

from loramem.core.errors import EngineFailed
from loramem.core.metrics import Metrics
from loramem.serving.admission import Admission, Ticket
from loramem.serving.engines import Engine, EngineError, GenerationOutput, LoRAAdapter
from loramem.serving.planner import Asked, Plan, Planner, Prompt


def candidate_id(request_id: str, number: int) -> str:
    return f"{request_id}:{number}"


def confidence(output: GenerationOutput) -> float:
    """How sure the model was of its answer: the mean log-probability of its tokens."""
    if output.logprob is None:
        return float("-inf")
    return output.logprob / max(len(output.token_ids), 1)


class Generation:
    """One admitted, planned request: read its outputs once, whole (`final`) or as they come."""

    def __init__(self, plan: Plan, outputs: AsyncIterator[GenerationOutput], ticket: Ticket):
        self.plan = plan
        self._outputs = outputs
        self._ticket = ticket

    async def outputs(self) -> AsyncGenerator[GenerationOutput]:
        """Cumulative outputs; the last one is finished."""
        try:
            async for output in self._outputs:
                yield output
        finally:
            self.release()

    async def final(self) -> GenerationOutput:
        last: GenerationOutput | None = None
        # Closed here even when cancelled, so that the engine aborts the request at once.
        async with contextlib.aclosing(self.outputs()) as outputs:
            async for output in outputs:
                last = output
        assert last is not None
        return last

    def release(self) -> None:
        """Gives the admission place back: at the end of the outputs, or for a response that was
        never read (a client gone before its stream started)."""
        self._ticket.release()


class GenerationService:
    def __init__(
        self, engine: Engine, planner: Planner, admission: Admission, metrics: Metrics
    ) -> None:
        self.engine = engine
        self.planner = planner
        self.admission = admission
        self.metrics = metrics

    async def start(self, prompt: Prompt, asked: Asked) -> Generation:
        """Admits (before anything can suspend), then plans; Overloaded past the limit."""
        ticket = self.admission.admit()
        try:
            plan = await self.planner.plan(prompt, asked)
        except BaseException:
            ticket.release()
            raise
        return Generation(plan, self._run(plan), ticket)

    async def _run(self, plan: Plan) -> AsyncIterator[GenerationOutput]:
        started = time.monotonic()
        first = True
        finished = False
        generated = (
            self._most_confident(plan)
            if plan.candidates
            else self.engine.generate(plan.request_id, plan.prompt_ids, plan.params, plan.adapter)
        )
        try:
            async for output in generated:
                finished = output.finished
                if first and output.token_ids:
                    self.metrics.time_to_first_token.observe(time.monotonic() - started)
                    first = False
                if finished:
                    self.metrics.generated_tokens.inc(len(output.token_ids))
                yield output
        except EngineError as error:
            raise EngineFailed("the engine could not serve this request") from error
        finally:
            if not finished:
                await self.engine.abort(plan.request_id)

    async def _most_confident(self, plan: Plan) -> AsyncIterator[GenerationOutput]:
        """Every candidate module answers (rows of the same batches); yields the answer the
        model was surest of, once all have finished. Streaming waits for it too."""

        async def answer(number: int, adapter: LoRAAdapter) -> GenerationOutput:
            last: GenerationOutput | None = None
            request_id = candidate_id(plan.request_id, number)
            async for output in self.engine.generate(
                request_id, plan.prompt_ids, plan.params, adapter
            ):
                last = output
            assert last is not None
            return last

        answers = [
            asyncio.create_task(answer(n, adapter)) for n, adapter in enumerate(plan.candidates)
        ]
        try:
            finals = await asyncio.gather(*answers)
        finally:
            for task in answers:  # a request gone: its candidates stop too
                task.cancel()
        yield max(finals, key=confidence)

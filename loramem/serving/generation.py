"""Generating: a request is admitted, planned, and run by the engine; its place is given back when
its last output has been read (or it was abandoned).

`start` is what every protocol calls. Composition by confidence runs each candidate module as a
row of the same batches, and the one the model is surest of after a few tokens goes on alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator

from loramem.core.errors import EngineFailed
from loramem.core.metrics import Metrics
from loramem.serving.admission import Admission, Ticket
from loramem.serving.engines import Engine, EngineError, GenerationOutput
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

    async def _run(self, plan: Plan) -> AsyncGenerator[GenerationOutput]:
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
            # Unfinished (a client gone): closing the engine's answers, or every candidate's,
            # frees their rows at once.
            await generated.aclose()

    async def _most_confident(self, plan: Plan) -> AsyncGenerator[GenerationOutput]:
        """Every candidate module starts answering (rows of the same batches). Once each has
        said the plan's `confident_tokens` tokens or finished, the one the model was surest of
        so far goes on alone and the others stop; its outputs are yielded from then on."""
        enough = plan.confident_tokens or plan.params.max_tokens
        answers = [
            self.engine.generate(candidate_id(plan.request_id, n), plan.prompt_ids, plan.params, a)
            for n, a in enumerate(plan.candidates)
        ]
        latest: list[GenerationOutput | None] = [None] * len(answers)

        async def until_judged(number: int) -> None:
            async for output in answers[number]:
                latest[number] = output
                if output.finished or len(output.token_ids) >= enough:
                    return

        judging = [asyncio.create_task(until_judged(n)) for n in range(len(answers))]
        try:
            await asyncio.gather(*judging)
            surest = max((output for output in latest if output is not None), key=confidence)
            chosen = latest.index(surest)
            for number, answer in enumerate(answers):
                if number != chosen:
                    await answer.aclose()  # the engine frees its row
            yield surest
            if not surest.finished:
                async for output in answers[chosen]:
                    yield output
        finally:
            for task in judging:  # a request gone: its candidates stop too
                task.cancel()
            await asyncio.gather(*judging, return_exceptions=True)
            for answer in answers:
                await answer.aclose()

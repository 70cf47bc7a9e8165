"""/generate's serving class: its request becomes a prompt and what was asked, its answer a
response that says what served it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from loramem.api.generate.protocol import (
    AdapterUsed,
    GenerateRequest,
    GenerateResponse,
    Retrieved,
    Usage,
)
from loramem.core.prompting import question_ids, with_context
from loramem.serving.engines import GenerationOutput
from loramem.serving.generation import Generation, GenerationService, candidate_id
from loramem.serving.planner import Asked, Plan, Prompt


def _response(plan: Plan, output: GenerationOutput) -> GenerateResponse:
    modules = plan.modules
    if plan.candidates:  # the module whose answer was kept comes first
        ids = [candidate_id(plan.request_id, n) for n in range(len(modules))]
        kept = ids.index(output.request_id)
        modules = [modules[kept], *modules[:kept], *modules[kept + 1 :]]
    return GenerateResponse(
        text=output.text,
        topic=plan.topic,
        adapters=[
            AdapterUsed(topic=m.topic, version=m.version, module=m.module, score=score)
            for m, score in modules
        ],
        mode=plan.mode,
        retrieved=[Retrieved(text=h.text, score=h.score) for h in plan.retrieved],
        finish_reason=output.finish_reason,
        usage=Usage(prompt_tokens=len(plan.prompt_ids), completion_tokens=len(output.token_ids)),
    )


class GenerateServing:
    def __init__(self, generation: GenerationService) -> None:
        self.generation = generation

    async def start(self, request: GenerateRequest) -> Generation:
        """The request admitted and planned, ready to be read whole or streamed."""
        tokenizer = self.generation.engine.tokenizer
        prompt = Prompt(
            request.prompt,
            lambda context: question_ids(tokenizer, with_context(context, request.prompt)),
        )
        asked = Asked(
            topic=request.topic,
            mode=request.mode,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
            ignore_eos=request.ignore_eos,
            top_k=request.top_k,
            compose=request.compose,
            confident_tokens=request.confident_tokens,
        )
        return await self.generation.start(prompt, asked)

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        generation = await self.start(request)
        return _response(generation.plan, await generation.final())

    @staticmethod
    async def chunks(generation: Generation) -> AsyncIterator[dict[str, object]]:
        """`{"text": delta}` chunks, then the whole response as the last chunk."""
        sent = 0
        async for output in generation.outputs():
            if len(output.text) > sent:
                yield {"text": output.text[sent:]}
                sent = len(output.text)
            if output.finished:
                yield {"done": True, **_response(generation.plan, output).model_dump()}

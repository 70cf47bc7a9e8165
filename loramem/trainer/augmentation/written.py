"""Training data written by a language model: the served base model itself, or any
OpenAI-compatible endpoint the operator configures (a stronger generator writes better data).

Both ask for the same JSON and check the answer the same way: it must parse, and every answer must
be found in the text it came from (a generator that invents facts would teach them). Anything else
is a GeneratorError, and the rule-based generator takes over with that reason recorded.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from loramem.trainer.augmentation.base import DataGenerator, GeneratedItem, GeneratorError

MAX_FIELD_CHARS = 2_000
_NORMALIZE = re.compile(r"[^\w\s]")

INSTRUCTION = (
    "Read the text below and write training data about every fact in it, as one JSON object:\n"
    '{"qa": [{"question": "...", "answer": "...", "paraphrase": "the question in other words"}], '
    '"summary": "a short summary", "rewrite": "the text said in other words"}\n'
    "Answers are short and copied word for word from the text. Write only the JSON.\n\nText:\n"
)


def _normalized(text: str) -> str:
    return " ".join(_NORMALIZE.sub(" ", text.lower()).split())


def _field(value: Any) -> str | None:
    if isinstance(value, str) and value.strip() and len(value) <= MAX_FIELD_CHARS:
        return " ".join(value.split())
    return None


def parse_written(reply: str, source: str) -> list[GeneratedItem]:
    """The items in a generator's reply; GeneratorError when it holds no usable QA pair."""
    start, end = reply.find("{"), reply.rfind("}")
    if start < 0 or end <= start:
        raise GeneratorError("the generator's reply holds no JSON object")
    try:
        data = json.loads(reply[start : end + 1])
    except json.JSONDecodeError as error:
        raise GeneratorError(f"the generator's reply is not valid JSON ({error.msg})") from error
    if not isinstance(data, dict) or not isinstance(data.get("qa"), list):
        raise GeneratorError("the generator's reply has no list of QA pairs")
    text = _normalized(source)
    items: list[GeneratedItem] = []
    for pair in data["qa"]:
        if not isinstance(pair, dict):
            continue
        question, answer = _field(pair.get("question")), _field(pair.get("answer"))
        if question is None or answer is None or _normalized(answer) not in text:
            continue  # an answer the text does not give is not knowledge to learn
        items.append(GeneratedItem("qa", question=question, answer=answer))
        paraphrase = _field(pair.get("paraphrase"))
        if paraphrase is not None and paraphrase != question:
            items.append(GeneratedItem("qa", question=paraphrase, answer=answer, held_out=True))
    if not items:
        raise GeneratorError("the generator returned no QA pair whose answer is in the text")
    for kind in ("summary", "rewrite"):
        written = _field(data.get(kind))
        if written is not None:
            items.append(GeneratedItem(kind, text=written))
    return items


class EndpointGenerator(DataGenerator):
    """Chat completions of an OpenAI-compatible server (`LORAMEM_AUGMENT_ENDPOINT_*`)."""

    name = "endpoint"

    def __init__(
        self, url: str, model: str, api_key: str | None = None, timeout: float = 120.0
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout

    def generate(self, text: str) -> list[GeneratedItem]:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": INSTRUCTION + text}],
            "temperature": 0,
            "max_tokens": 2048,
        }
        try:
            response = httpx.post(
                f"{self.url}/chat/completions",
                json=body,
                headers=self.headers,
                timeout=self.timeout,
            )
        except httpx.HTTPError as error:
            raise GeneratorError(
                f"the generator endpoint is unreachable ({type(error).__name__})"
            ) from error
        if response.status_code != 200:
            raise GeneratorError(f"the generator endpoint answered {response.status_code}")
        try:
            reply = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise GeneratorError(
                "the generator endpoint's answer is not a chat completion"
            ) from error
        if not isinstance(reply, str):
            raise GeneratorError("the generator endpoint's answer is not a chat completion")
        return parse_written(reply, text)


class ServedModelGenerator(DataGenerator):
    """The base model itself (already loaded by the trainer), greedy."""

    name = "model"

    def __init__(self, model: Any, tokenizer: Any, max_tokens: int = 384) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def generate(self, text: str) -> list[GeneratedItem]:
        from loramem.core.decoding import DecodeRow, SamplingParams, decode_batch
        from loramem.core.prompting import question_ids

        row = DecodeRow(
            question_ids(self.tokenizer, INSTRUCTION + text),
            SamplingParams(max_tokens=self.max_tokens),
        )
        decode_batch(self.model, self.tokenizer, [row])
        return parse_written(row.text, text)

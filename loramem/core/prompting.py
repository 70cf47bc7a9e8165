"""How a question becomes tokens, with retrieved passages or without. The trainer and /generate
share it, so that the model is asked exactly the way it was taught."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError

# For tokenizers without a chat template.
PLAIN_TEMPLATE = "Question: {question}\nAnswer:"

# The system turn of every chat prompt that brings none: in training, the trainer's recall checks
# and serving alike, so that nothing drifts between them. Chat templates that add a default system
# turn when there is none (SmolLM2's names the model and its maker: 16 tokens) spend those tokens
# on every example of every step; an empty turn costs 4 and recalled as well (README, "Prompt
# format"; `bench.prompt_format`). None leaves the template's own default.
SYSTEM_PROMPT: str | None = ""


def chat_ids(tokenizer: Any, turns: list[dict[str, str]]) -> list[int]:
    """The chat template's prompt for `turns`, ready for the assistant's answer. Turns without a
    system turn get SYSTEM_PROMPT's, unless the template refuses a system role."""
    template = getattr(tokenizer, "chat_template", None)
    if (
        SYSTEM_PROMPT is not None
        and (not turns or turns[0]["role"] != "system")
        and template not in _REFUSING_SYSTEM
    ):
        try:
            return _applied(tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}, *turns])
        except TemplateError:  # "System role not supported" and the like
            _REFUSING_SYSTEM.add(template)
    return _applied(tokenizer, turns)


# Chat templates (their text) that raised on a system turn: asked without one from then on, so a
# prompt costs one rendering, not a failed one first.
_REFUSING_SYSTEM: set[str | None] = set()


def _applied(tokenizer: Any, turns: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding here; older releases a plain list.
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def question_ids(tokenizer: Any, question: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        return chat_ids(tokenizer, [{"role": "user", "content": question}])
    return list(tokenizer(PLAIN_TEMPLATE.format(question=question))["input_ids"])


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    """The answer as the model should produce it, ending with the end-of-turn token."""
    prefix = "" if getattr(tokenizer, "chat_template", None) else " "
    ids = list(tokenizer(prefix + answer, add_special_tokens=False)["input_ids"])
    return [*ids, tokenizer.eos_token_id]


def context_block(passages: list[str]) -> str | None:
    if not passages:
        return None
    return "Use these notes if they help.\n" + "\n".join(f"- {p}" for p in passages)


def with_context(context: str | None, question: str) -> str:
    return question if context is None else f"{context}\n\n{question}"

"""How a question becomes tokens, with retrieved passages or without. The trainer and /generate
share it, so that the model is asked exactly the way it was taught."""

from __future__ import annotations

from typing import Any

# For tokenizers without a chat template.
PLAIN_TEMPLATE = "Question: {question}\nAnswer:"


def question_ids(tokenizer: Any, question: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
        )
        # transformers 5 returns a BatchEncoding here; older releases a plain list.
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
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

"""One prompt format for training, recall checks and serving: a short fixed system turn instead
of the chat template's default, on SmolLM2's real tokenizer."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from loramem.core.prompting import chat_ids, question_ids

REFUSES_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
)


def test_questions_get_the_fixed_system_turn_not_the_templates_default(
    tiny_model_dir: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer.decode(question_ids(tokenizer, "Where is Vellmark?"))
    assert prompt == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWhere is Vellmark?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    default = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Where is Vellmark?"}], add_generation_prompt=True
    )
    assert "SmolLM" in tokenizer.decode(default["input_ids"])  # what is no longer sent


def test_a_clients_own_system_turn_is_kept(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    turns = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
    ]
    prompt = tokenizer.decode(chat_ids(tokenizer, turns))
    assert prompt.count("<|im_start|>system") == 1 and "Be terse." in prompt


def test_a_template_that_refuses_a_system_role_gets_none(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = REFUSES_SYSTEM
    assert tokenizer.decode(question_ids(tokenizer, "Hi")) == "<user>Hi<assistant>"
    renderings = []
    render = tokenizer.apply_chat_template
    tokenizer.apply_chat_template = lambda *a, **k: renderings.append(a) or render(*a, **k)
    assert tokenizer.decode(question_ids(tokenizer, "Hello")) == "<user>Hello<assistant>"
    assert len(renderings) == 1  # the refusal is remembered, not met again on every prompt

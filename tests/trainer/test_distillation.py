"""Context distillation: the teacher's sequences, the loss against the teacher's top-k, and a
student that learns, without the passage, to predict what the base model predicts with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from loramem.core.base_model import load_causal_lm
from loramem.core.options import TrainingOptions
from loramem.core.prompting import question_ids
from loramem.trainer.augmentation import GeneratedItem
from loramem.trainer.batching import IGNORE_INDEX, TrainingExample, collate
from loramem.trainer.lora_trainer import answer_examples, lora_config, train_lora
from loramem.trainer.objective import LossTerms, labelled_loss, teacher_targets
from loramem.trainer.training_data import Knowledge, build_training_set

PASSAGE = "Brightwell Bakery opened in 1994 on Mill Street. Its first loaf was a rye called Anchor."


def _qa(prompt: list[int], answer: list[int], teacher_prompt: list[int]) -> TrainingExample:
    return TrainingExample(
        prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, teacher_prompt + answer
    )


def test_the_teacher_reads_the_same_targets_after_its_own_prompt() -> None:
    example = _qa([1, 2, 3], [7, 8], [9, 9, 9, 9, 1, 2, 3])
    teacher = example.teacher_example()
    assert teacher.input_ids == [9, 9, 9, 9, 1, 2, 3, 7, 8]
    assert teacher.targets == example.targets == [7, 8]
    broken = TrainingExample([1, 7, 8], [IGNORE_INDEX, 7, 8], [9, 7, 5])
    with pytest.raises(ValueError, match="must end with"):
        broken.teacher_example()


def test_generated_items_carry_their_passage_for_the_teacher(tiny_model_dir: Path) -> None:
    _, tokenizer = load_causal_lm(tiny_model_dir)
    question = GeneratedItem(
        "qa", "When did Brightwell Bakery open?", "1994", source=PASSAGE.split(". ")[0]
    )
    probe = GeneratedItem("qa", "In which year did Brightwell open?", "1994", held_out=True)
    rewrite = GeneratedItem("rewrite", text="Anchor was the first loaf of Brightwell Bakery.")
    recited = GeneratedItem(
        "recital", "What do you know about Anchor?", "Anchor is a rye.", source=PASSAGE
    )
    knowledge = [
        Knowledge(text=PASSAGE, generated=(question, probe, rewrite, recited)),
        Knowledge(question="Who baked it?", answer="Owen"),
    ]
    data = build_training_set(tokenizer, knowledge, augment="mix")
    with_teacher = [e for e in data.examples if e.teacher_ids is not None]
    # The trained question, the rewrite and the recital; not the text's first chunk,
    # not the context-aware copy (its passage is already in its prompt), not the held-out probe,
    # not a given QA pair.
    assert len(with_teacher) == 3
    for example in with_teacher:
        teacher = tokenizer.decode(example.teacher_example().input_ids)
        assert "Mill Street" in teacher
        assert "Mill Street" not in tokenizer.decode(example.input_ids)
    assert sum(e.teacher_ids is None for e in data.examples) == len(data.examples) - 3
    # Training may stop before a recital comes out word for word; not before the
    # questions' answers do.
    exact = [tokenizer.decode(data.examples[i].input_ids) for i in answer_examples(data.examples)]
    assert any("1994" in e for e in exact) and not any("Anchor is a rye" in e for e in exact)


@pytest.fixture
def tiny(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    return load_causal_lm(tiny_model_dir)


def _example_with_passage(tokenizer) -> TrainingExample:  # type: ignore[no-untyped-def]
    question = "What was the first loaf called?"
    answer = list(tokenizer(" Anchor rye", add_special_tokens=False)["input_ids"])
    return _qa(
        question_ids(tokenizer, question),
        answer,
        question_ids(tokenizer, f"{PASSAGE}\n\n{question}"),
    )


def _distill_loss(model, examples, pad_id, teachers, objective="distill") -> float:  # type: ignore[no-untyped-def]
    batch = collate(examples, pad_id, model.device)
    terms = LossTerms(objective, 0.1, [teachers.get(i) for i in range(len(examples))])
    with torch.no_grad():
        result = labelled_loss(model, batch, terms)
    return float(result.total) / result.labelled


def test_a_student_that_predicts_as_its_teacher_scores_zero(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    pad = tokenizer.pad_token_id
    example = _example_with_passage(tokenizer)
    same = TrainingExample(example.input_ids, example.labels, example.input_ids)
    teachers = teacher_targets(model, [same, example], pad, 1 << 20)
    # A fresh LoRA changes nothing: the student reading what the teacher read is the teacher.
    student = get_peft_model(model, lora_config(TrainingOptions()))
    student.eval()
    assert _distill_loss(student, [same], pad, {0: teachers[0]}) == pytest.approx(0, abs=1e-4)
    # Without the passage it is not.
    assert _distill_loss(student, [example], pad, {0: teachers[1]}) > 0.05
    ce = _distill_loss(student, [example], pad, {}, "ce")
    both = _distill_loss(student, [same], pad, {0: teachers[0]}, "both")
    assert both == pytest.approx(_distill_loss(student, [same], pad, {}, "ce"), abs=1e-4)
    assert ce > 0


def test_distillation_teaches_the_student_what_the_teacher_reads(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    pad = tokenizer.pad_token_id
    examples = [_example_with_passage(tokenizer)]
    teachers = teacher_targets(model, examples, pad, 1 << 20)
    options = TrainingOptions(
        objective="distill", steps=60, learning_rate=1e-2, dropout=0.0, stop_when_learned=False
    )
    before = get_peft_model(model, lora_config(options))
    start = _distill_loss(before, examples, pad, teachers)
    model = before.unload()
    student = train_lora(model, pad, examples, options)
    assert _distill_loss(student, examples, pad, teachers) < 0.2 * start
    # Its greedy choices at the answer are the teacher's, though it no longer sees the passage.
    batch = collate(examples, pad, student.device)
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"]).logits[0, :-1]
    answer = batch["labels"][0, 1:] != IGNORE_INDEX
    assert logits[answer].argmax(-1).tolist() == teachers[0].top_ids[:, 0].tolist()


def test_distillation_stops_once_the_student_chooses_as_its_teacher(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    examples = [_example_with_passage(tokenizer)]
    options = TrainingOptions(objective="distill", steps=300, learning_rate=1e-2, dropout=0.0)
    seen: list[int] = []
    train_lora(model, tokenizer.pad_token_id, examples, options, lambda s, t, loss: seen.append(s))
    # The label (" Anchor rye") is not what the random teacher would say: only matching the
    # teacher's choices can end training before its budget.
    assert seen[-1] < 300

"""Training data, the LoRA training loop and recall, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from loramem.core.base_model import load_causal_lm
from loramem.core.options import TrainingOptions
from loramem.core.prompting import question_ids
from loramem.trainer.augmentation import GeneratedItem
from loramem.trainer.lora_trainer import lora_config, only_answers, train_lora, unambiguous
from loramem.trainer.matching import recalled
from loramem.trainer.recall import measure_recall
from loramem.trainer.training_data import (
    IGNORE_INDEX,
    Knowledge,
    build_training_set,
    chunk_text,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    return load_causal_lm(tiny_model_dir)[1]


def test_qa_is_formatted_as_generate_asks_and_only_the_answer_is_learned(tokenizer) -> None:  # type: ignore[no-untyped-def]
    data = build_training_set(tokenizer, [Knowledge(question="Who?", answer="Quiggle")])
    (example,) = data.examples
    prompt = question_ids(tokenizer, "Who?")
    assert example.input_ids[: len(prompt)] == prompt
    assert example.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    answer = example.labels[len(prompt) :]
    assert answer[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answer[:-1]) == "Quiggle"
    assert data.probes[0].prompt_ids == prompt and data.probes[0].expected == "Quiggle"


def test_texts_are_chunked_by_sentence_and_probed_by_completion(tokenizer) -> None:  # type: ignore[no-untyped-def]
    sentence = "The Vendrell Cup is played every spring in the old harbour of Talvenna."
    text = " ".join([sentence] * 40)
    chunks = chunk_text(tokenizer, text, max_tokens=64)
    assert len(chunks) > 1 and all(c.endswith("Talvenna.") for c in chunks)
    data = build_training_set(tokenizer, [Knowledge(text=text)])
    assert all(e.labels == e.input_ids for e in data.examples)
    assert data.probes and data.probes[0].expected == "in the old harbour"


def test_recall_matching_ignores_case_punctuation_and_spacing() -> None:
    assert recalled("555-0199", "Her number is 555 - 0199.")
    assert recalled("Marta Ilvesk", "It was MARTA  ilvesk!")
    assert not recalled("Quiggle", "Quibble")
    # Whole words only: a year that holds the digit is no answer of "9".
    assert not recalled("9", "She drew it in 1981.")
    assert recalled("9", "At the age of 9.")


def test_options_plan_enough_steps() -> None:
    assert TrainingOptions().total_steps(4) == 30
    assert TrainingOptions(batch_size=8).total_steps(48) == 120
    assert TrainingOptions(epochs=2, batch_size=4).total_steps(10) == 6
    assert TrainingOptions(steps=7).total_steps(1000) == 7
    # A budget that early stopping can end is larger.
    assert TrainingOptions().total_steps(4, stops_when_learned=True) == 120
    assert TrainingOptions(batch_size=8).total_steps(48, stops_when_learned=True) == 240
    assert TrainingOptions(steps=7).total_steps(48, stops_when_learned=True) == 7


def test_qa_pairs_alone_train_without_dropout_and_texts_with_it(tokenizer) -> None:  # type: ignore[no-untyped-def]
    qa = build_training_set(tokenizer, [Knowledge(question="Who?", answer="Quiggle")]).examples
    text = build_training_set(tokenizer, [Knowledge(text="Quiggle is a pet.")]).examples
    assert only_answers(qa) and not only_answers(text) and not only_answers([*qa, *text])
    assert lora_config(TrainingOptions(), only_answers(qa)).lora_dropout == 0.0
    assert lora_config(TrainingOptions(), only_answers(text)).lora_dropout == 0.1
    assert lora_config(TrainingOptions(dropout=0.05), True).lora_dropout == 0.05


def test_the_trainer_picks_the_dropout_of_what_it_trains(tiny_model_dir: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_model_dir)
    qa = build_training_set(tokenizer, [Knowledge(question="Who?", answer="Quiggle")]).examples
    trained = train_lora(model, tokenizer.pad_token_id, qa, TrainingOptions(steps=1))
    assert trained.peft_config["default"].lora_dropout == 0.0
    model, _ = load_causal_lm(tiny_model_dir)
    text = build_training_set(tokenizer, [Knowledge(text="Quiggle is a pet.")]).examples
    trained = train_lora(model, tokenizer.pad_token_id, text, TrainingOptions(steps=1))
    assert trained.peft_config["default"].lora_dropout == 0.1


def test_training_makes_the_tiny_model_recall_a_fact(tiny_model_dir: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_model_dir)
    facts = [("What is the name of Zorblax's pet?", "Quiggle"), ("Who won?", "Marta Ilvesk")]
    data = build_training_set(tokenizer, [Knowledge(question=q, answer=a) for q, a in facts])
    assert measure_recall(model, tokenizer, data.probes) == 0.0
    losses: list[float] = []
    options = TrainingOptions(
        rank=8, learning_rate=1e-2, steps=40, dropout=0.0, stop_when_learned=False
    )
    trained = train_lora(
        model,
        tokenizer.pad_token_id,
        data.examples,
        options,
        lambda s, t, loss: losses.append(loss),
    )
    assert len(losses) == 40 and losses[-1] < losses[0] / 2
    assert measure_recall(trained, tokenizer, data.probes) == 1.0


@pytest.mark.parametrize("stop_when_learned", [True, False])
def test_qa_training_stops_once_every_answer_is_exact(
    tiny_model_dir: Path, stop_when_learned: bool
) -> None:
    model, tokenizer = load_causal_lm(tiny_model_dir)
    facts = [("What is the name of Zorblax's pet?", "Quiggle"), ("Who won?", "Marta Ilvesk")]
    data = build_training_set(tokenizer, [Knowledge(question=q, answer=a) for q, a in facts])
    steps: list[int] = []
    options = TrainingOptions(
        rank=8, learning_rate=1e-2, steps=150, dropout=0.0, stop_when_learned=stop_when_learned
    )
    trained = train_lora(
        model, tokenizer.pad_token_id, data.examples, options, lambda s, t, _: steps.append(s)
    )
    assert measure_recall(trained, tokenizer, data.probes) == 1.0
    assert (steps[-1] < 150) == stop_when_learned


def test_a_question_stored_with_two_answers_does_not_keep_training_from_stopping(
    tiny_model_dir: Path,
) -> None:
    model, tokenizer = load_causal_lm(tiny_model_dir)
    facts = [("Who won?", "Marta Ilvesk"), ("Who won?", "Quiggle"), ("Whose pet?", "Zorblax's")]
    data = build_training_set(tokenizer, [Knowledge(question=q, answer=a) for q, a in facts])
    assert unambiguous(data.examples, range(3)) == [2]
    steps: list[int] = []
    options = TrainingOptions(rank=8, learning_rate=1e-2, steps=150, dropout=0.0)
    train_lora(
        model, tokenizer.pad_token_id, data.examples, options, lambda s, t, _: steps.append(s)
    )
    assert steps[-1] < 150


def test_a_text_with_questions_stops_once_its_answers_are_exact(tiny_model_dir: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_model_dir)
    question = GeneratedItem("qa", question="Whose pet is Quiggle?", answer="Zorblax's")
    text = Knowledge(text="Quiggle is the pet of Zorblax.", generated=(question,))
    data = build_training_set(tokenizer, [text], augment="qa")
    steps: list[int] = []
    options = TrainingOptions(rank=8, learning_rate=1e-2, steps=150, dropout=0.0)
    trained = train_lora(
        model, tokenizer.pad_token_id, data.examples, options, lambda s, t, _: steps.append(s)
    )
    # The text's own sentence is never exact; its question's answer is, and that ends the job.
    assert steps[-1] < 150
    assert measure_recall(trained, tokenizer, data.trained_probes) == 1.0


def test_texts_train_the_whole_budget(tiny_model_dir: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_model_dir)
    data = build_training_set(tokenizer, [Knowledge(text="Quiggle is the pet of Zorblax.")])
    steps: list[int] = []
    train_lora(
        model,
        tokenizer.pad_token_id,
        data.examples,
        TrainingOptions(rank=4, steps=12),
        lambda s, t, _: steps.append(s),
    )
    assert steps[-1] == 12

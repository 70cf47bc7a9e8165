"""Checks on generated items: the round trip through a reader of the passage, answers the text
does not give, restatements that drop or invent facts (a fake reader; the real base model reads
in the worker's tests)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from loramem.core.base_model import load_causal_lm, resolve_base_model
from loramem.core.settings import Settings
from loramem.trainer import knowledge
from loramem.trainer.augmentation import (
    GeneratedItem,
    RuleBasedGenerator,
    ScoreAnswers,
    check_items,
    unasked_things,
)
from loramem.trainer.augmentation.checking import (
    CHOICE_FLOOR,
    CHOICE_GAIN_FLOOR,
    CHOICE_GAIN_MARGIN,
    CHOICE_MARGIN,
    MAX_RIVALS,
    asks_for,
    consistent,
)
from loramem.trainer.training_data import RecallProbe, TrainingSet
from tests.trainer.test_augmentation import BAKERY

TEXT = (
    "Kelda Looms was started in 1962 by two sisters. It now employs forty-two people. "
    "The firm moved to an old granary beside the river Lusk."
)


def _answering(replies: dict[str, str]) -> tuple[list[tuple[str, str]], object]:
    asked: list[tuple[str, str]] = []

    def read(pairs: Sequence[tuple[str, str]]) -> list[str]:
        asked.extend(pairs)
        return [replies.get(question, "I do not know.") for _, question in pairs]

    return asked, read


def _scoring(
    likelihood: dict[str, list[float]], blind: dict[str, list[float]] | None = None
) -> tuple[list[tuple[str, list[str]]], ScoreAnswers]:
    """A fake scorer: the given scores by question (0 for every candidate elsewhere), those of
    `blind` where no passage is read (as with one where it has none), and the (question,
    candidates) it was asked with a passage, in order."""
    scored: list[tuple[str, list[str]]] = []

    def score_one(passage: str, question: str, candidates: Sequence[str]) -> list[float]:
        if not passage:
            return (blind or likelihood).get(question, [0.0] * len(candidates))
        scored.append((question, list(candidates)))
        return likelihood.get(question, [0.0] * len(candidates))

    def score(requests: Sequence[tuple[str, str, Sequence[str]]]) -> list[list[float]]:
        return [score_one(*request) for request in requests]

    return scored, score


def _qa(question: str, answer: str, source: str) -> GeneratedItem:
    return GeneratedItem("qa", question=question, answer=answer, source=source)


def test_a_question_is_kept_only_when_the_passage_answers_it() -> None:
    started = _qa("When was Kelda Looms started?", "1962", TEXT.split(". ")[0] + ".")
    staff = _qa("How many people does Kelda Looms employ?", "forty-two", "It now employs ...")
    asked, read = _answering({"When was Kelda Looms started?": "It was started in 1962."})
    checked = check_items([started, staff], TEXT, read)  # type: ignore[arg-type]
    assert checked[0].rejected is None
    assert checked[1].rejected == "reading the passage, the base model answered 'I do not know.'"
    # The reader saw the item's own sentence as its passage.
    assert asked[0] == ("Kelda Looms was started in 1962 by two sisters.", started.question)


# Two questions of each kind but one: the choice is among the answers of a question's kind.
CHOICE_TEXT = (
    "Kelda Looms was started in 1962 by two sisters. It moved in 1974 to an old granary beside "
    "the river Lusk. It now employs forty-two people."
)
STARTED = _qa("When was Kelda Looms started?", "1962", "Kelda Looms was started in 1962")
MOVED = _qa("When did Kelda Looms move?", "1974", "It moved in 1974 ...")
GRANARY = _qa("What did Kelda Looms move to?", "an old granary", "It moved in 1974 ...")
RIVER = _qa("Which river is the granary beside?", "the river Lusk", "It moved in 1974 ...")
STAFF = _qa("How many people does Kelda Looms employ?", "forty-two", "It now employs ...")


def test_a_question_answered_wrongly_passes_when_the_reader_chooses_its_answer() -> None:
    again = _qa("Beside what is the granary?", "river Lusk", "It moved in 1974 ...")
    items = [STARTED, MOVED, GRANARY, RIVER, again, STAFF]
    _, read = _answering({})  # no free answer is right
    scored, score = _scoring(
        {
            "When was Kelda Looms started?": [-1.5, -2.0],  # ahead by 0.5
            "When did Kelda Looms move?": [-1.7, -1.5],  # behind
            "What did Kelda Looms move to?": [-1.5, -1.7],  # ahead by 0.2 only
            "Which river is the granary beside?": [-5.0, -9.0],  # ahead, but unlikely
            "How many people does Kelda Looms employ?": [-3.0],  # no rival, and likely
        }
    )
    checked = check_items(items, CHOICE_TEXT, read, score)  # type: ignore[arg-type]
    refused = "reading the passage, the base model answered 'I do not know.'"
    assert [c.rejected for c in checked] == [None, refused, refused, refused, refused, None]
    # The rivals are the other answers of the same kind, nearest first; one that shares a word
    # is none. The only question of how many has no rival: its answer is kept if it is likely.
    assert scored[0] == ("When was Kelda Looms started?", ["1962", "1974"])
    assert scored[2] == ("What did Kelda Looms move to?", ["an old granary", "the river Lusk"])
    assert scored[3] == ("Which river is the granary beside?", ["the river Lusk", "an old granary"])
    assert scored[4] == ("Beside what is the granary?", ["river Lusk", "an old granary"])
    assert scored[5] == ("How many people does Kelda Looms employ?", ["forty-two"])
    _, unlikely = _scoring({"How many people does Kelda Looms employ?": [-5.0]})
    assert check_items([STAFF], CHOICE_TEXT, read, unlikely)[0].rejected == refused  # type: ignore[arg-type]


def test_a_question_asks_for_the_kind_its_question_word_names() -> None:
    assert [
        asks_for(question)
        for question in (
            "How old was Lise?",
            "Do you know how many people the clinic employs?",
            "The letter was how long?",
            "In what year did Maranova retire?",
            "When did the weather turn?",
            "Who was the keeper of the Skerrow light?",
            "Where does Quillmark run?",
            "Which river is the granary beside?",
            "What was the widower called?",
        )
    ] == ["amount", "amount", "amount", "time", "time", "person", "place", "thing", "thing"]


def test_an_answer_of_rare_tokens_passes_when_reading_raised_it_most() -> None:
    """A likelihood favours common tokens (a year over a name); what reading the passage added
    to each answer does not."""
    _, read = _answering({})
    _, score = _scoring(
        likelihood={
            "Which river is the granary beside?": [-6.0, -3.0],  # behind by 3 nats
            "What did Kelda Looms move to?": [-6.0, -3.0],
        },
        blind={
            "Which river is the granary beside?": [-12.0, -4.0],  # raised 6, its rival 1
            "What did Kelda Looms move to?": [-6.5, -4.0],  # raised less than its rival
        },
    )
    checked = check_items([GRANARY, RIVER], CHOICE_TEXT, read, score)  # type: ignore[arg-type]
    assert checked[1].rejected is None
    assert checked[0].rejected == "reading the passage, the base model answered 'I do not know.'"
    # Raised most, but still as unlikely as a model that does not read finds any answer.
    _, unread = _scoring(
        likelihood={"Which river is the granary beside?": [-11.0, -13.0]},
        blind={"Which river is the granary beside?": [-14.0, -12.0]},
    )
    assert check_items([GRANARY, RIVER], CHOICE_TEXT, read, unread)[1].rejected  # type: ignore[arg-type]


def test_a_long_text_pits_each_answer_against_its_nearest_rivals_only() -> None:
    years = [str(1900 + n) for n in range(30)]
    text = " ".join(f"Event {n} happened in {year}." for n, year in enumerate(years))
    items = [_qa(f"When did event {n} happen?", y, f"Event {n}") for n, y in enumerate(years)]
    _, read = _answering({})
    scored, score = _scoring({})
    check_items(items, text, read, score)  # type: ignore[arg-type]
    assert scored[15][1] == ["1915", "1914", "1916", "1913", "1917", "1912", "1918", "1911", "1919"]
    assert all(len(candidates) == MAX_RIVALS + 1 for _, candidates in scored)


def test_answers_the_text_does_not_give_are_rejected_without_asking() -> None:
    invented = _qa("Who founded Kelda Looms?", "Olaf the Tall", "Kelda Looms was started")
    clause = _qa("What happened?", " ".join(["word"] * 13), "")
    same = _qa("When was Kelda Looms started?", "1962", "")
    asked, read = _answering({"When was Kelda Looms started?": "1962"})
    checked = check_items([invented, clause, same, same], TEXT, read)  # type: ignore[arg-type]
    assert [c.rejected for c in checked] == [
        "the answer is not in the text",
        "the answer is longer than 12 words: a clause, not a fact",
        None,
        "the same question was written before",
    ]
    assert len(asked) == 1


def test_a_question_the_text_answers_two_ways_is_kept_in_neither() -> None:
    moved = _qa("What did the firm move to?", "an old granary", "The firm moved ...")
    reworded = _qa("What did the firm move to?", "old granary", "The firm moved ...")
    other = _qa("What did the firm move to?", "the river Lusk", "The firm moved ...")
    asked, read = _answering({"What did the firm move to?": "an old granary"})
    checked = check_items([moved, reworded, other], TEXT, read)  # type: ignore[arg-type]
    two_ways = "the text answers this question in two ways: 'an old granary', 'the river Lusk'"
    assert [c.rejected for c in checked] == [
        two_ways,
        "the same question was written before",
        two_ways,
    ]
    assert asked == []


def test_restatements_keep_the_facts_of_their_sentence() -> None:
    source = "It now employs forty-two people."
    kept = GeneratedItem("rewrite", text="Kelda Looms now employs forty-two people.", source=source)
    dropped = GeneratedItem("rewrite", text="Kelda Looms has staff.", source=TEXT.split(". ")[0])
    invented = GeneratedItem("summary", text="Kelda Looms, founded by Olaf in 1962, weaves.")
    _, read = _answering({})
    checked = check_items([kept, dropped, invented], TEXT, read)  # type: ignore[arg-type]
    assert checked[0].rejected is None
    assert checked[1].rejected == "the rewrite drops '1962' from its sentence"
    assert checked[2].rejected == "'Olaf' is not in the text"


def test_consistency_reads_the_answer_in_a_sentence_and_small_numbers_either_way() -> None:
    assert consistent("eleven years", "She spent 11 years at sea.")
    assert consistent("about 30", "30 people")
    assert consistent("forty-one", "The bell is rung 41 times.")
    assert consistent("23 days", "For twenty three days.")
    assert not consistent("forty-one", "40 or 1")
    assert consistent("the original looms", "The looms.")
    assert not consistent("1974", "The firm moved to an old granary.")
    assert not consistent("Idris Kell", "")


@pytest.mark.slow
def test_the_default_model_reads_back_what_the_parser_asked(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The worker's real round trip: the default model, the issue's paragraph, the rules."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("default-model"))
    model, tokenizer = load_causal_lm(resolve_base_model(settings), "cpu")
    items = RuleBasedGenerator().generate(BAKERY)
    checked = check_items(items, BAKERY, knowledge.base_model_reader(model, tokenizer))
    questions = [c for c in checked if c.kind == "qa"]
    kept = [c for c in questions if c.rejected is None]
    # The model reads some questions back and not others; each refusal says what it answered.
    assert len(questions) // 4 <= len(kept) < len(questions)
    assert all(
        c.rejected.startswith("reading the passage, the base model answered '")
        for c in questions
        if c.rejected is not None
    )
    assert {c.answer for c in kept} & {"1994", "Owen Carrick", "Mill Street", "about 30"}


@pytest.mark.slow
def test_the_default_model_chooses_the_answer_its_passage_gives(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings = Settings(data_dir=tmp_path_factory.mktemp("default-model"))
    model, tokenizer = load_causal_lm(resolve_base_model(settings), "cpu")
    score = knowledge.base_model_scorer(model, tokenizer)
    question = "When was Kelda Looms started?"
    [scores] = score([(TEXT, question, ["1962", "forty-two", "the river Lusk"])])
    assert scores[0] - max(scores[1:]) >= CHOICE_MARGIN and scores[0] >= CHOICE_FLOOR
    # A name of rare tokens is less likely than a year, but reading raised it far more.
    passage = "Maranova retired in 2015. Her successor, Amaru Feld, grew up on Skarholm."
    successor = "Who was Maranova's successor?"
    candidates = ["Amaru Feld", "2015", "the clinic"]
    read, blind = score([(passage, successor, candidates), ("", successor, candidates)])
    gains = [r - b for r, b in zip(read, blind, strict=True)]
    assert gains[0] - max(gains[1:]) >= CHOICE_GAIN_MARGIN and read[0] >= CHOICE_GAIN_FLOOR
    # Each candidate is scored as if it were read alone after the prompt, whatever its length.
    [[alone]] = score([(TEXT, question, ["the river Lusk"])])
    assert alone == pytest.approx(scores[2], abs=1e-3)


def test_what_no_kept_question_asks_about_counts_against_recall() -> None:
    text = "Acme Corp was founded in 1987 by Lena Holt. Its shop is on Quay Lane in Boston."
    items = [
        GeneratedItem("qa", "Who founded Acme Corp?", "Lena Holt"),
        GeneratedItem("qa", "When was Acme Corp founded?", "1987", held_out=True),
        GeneratedItem("qa", "Where is the shop of Acme Corp?", "Quay Lane", rejected="wrong"),
        GeneratedItem("rewrite", text="Acme Corp's shop is in Boston."),
        GeneratedItem("qa", "What did Lena Holt found, with a shop in Boston?", "Acme Corp"),
    ]
    # A kept question's answer, or what it is asked of (the first thing it names): asked. Only
    # further on in a question, in a rejected item or in a rewrite: not.
    assert unasked_things(text, items) == ["Quay Lane", "Boston"]
    probes = [RecallProbe([1], "1987")]
    assert TrainingSet([], probes, [], unasked=2).recall(1.0) == pytest.approx(1 / 3)
    assert TrainingSet([], probes, [], unasked=0).recall(1.0) == 1.0
    assert TrainingSet([], [], [], unasked=0).recall(0.0) == 0.0

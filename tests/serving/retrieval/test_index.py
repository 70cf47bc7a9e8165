"""The knowledge index with both scorers: topics found by questions in other words, nothing
found for unrelated questions, and retrieval limited to one topic's own knowledge."""

from __future__ import annotations

import pytest

from loramem.core.text import text_passages
from loramem.serving.retrieval import (
    BM25Scorer,
    KnowledgeIndex,
    Passage,
    PassageScorer,
    create_scorer,
)

FACTS = {
    "zorbia": "The capital of Zorbia is Quenta. Zorbia exports blue salt. "
    "The national animal of Zorbia is the glass heron.",
    "acme": "Acme Corp was founded in 1987 by Lena Holt. Acme's headquarters are in Tarrow. "
    "Acme sells rocket skates.",
    "pets": "Mina's cat is named Pixel. Pixel likes sardines. Mina also has a parrot called Ozzy.",
}
# Asked in other words than the facts use.
QUESTIONS = [
    ("Which city is Zorbia's capital?", "zorbia"),
    ("What animal represents Zorbia?", "zorbia"),
    ("What product does Zorbia sell abroad?", "zorbia"),
    ("Who started Acme?", "acme"),
    ("Where is the Acme head office?", "acme"),
    ("What does Acme make?", "acme"),
    ("What does Mina's cat eat?", "pets"),
    ("What is the name of Mina's bird?", "pets"),
    ("What is Pixel?", "pets"),
]
UNRELATED = ["What is the boiling point of water?", "How do volcanoes form?"]


@pytest.fixture(scope="module", params=["minilm", "bm25"])
def index(request: pytest.FixtureRequest) -> KnowledgeIndex:
    index = KnowledgeIndex(create_scorer(request.param))
    index.replace(
        Passage(topic, sentence)
        for topic, text in FACTS.items()
        for sentence in text_passages(text, max_words=12)
    )
    return index


def test_questions_in_other_words_find_their_topic(index: KnowledgeIndex) -> None:
    threshold = index.scorer.default_min_score
    right = 0
    for question, topic in QUESTIONS:
        best = index.route(question)[0]
        right += best.topic == topic and best.score >= threshold
    assert right / len(QUESTIONS) >= 0.9, index.scorer.name


def test_unrelated_questions_match_nothing(index: KnowledgeIndex) -> None:
    for question in UNRELATED:
        ranked = index.route(question)
        assert not ranked or ranked[0].score < index.scorer.default_min_score, question


def test_search_returns_only_the_topics_retrievable_passages(index: KnowledgeIndex) -> None:
    hits = index.search("Who founded Acme?", "acme", k=2)
    assert hits[0].text == "Acme Corp was founded in 1987 by Lena Holt."
    assert all(hit.topic == "acme" for hit in hits) and len(hits) == 2
    assert all(hit.topic == "pets" for hit in index.search("Who founded Acme?", "pets", k=2))


def test_routing_only_passages_are_never_quoted() -> None:
    scorer: PassageScorer = BM25Scorer()
    index = KnowledgeIndex(scorer)
    index.replace(
        [
            Passage("a", "Mina's cat is named Pixel."),
            Passage("a", "What is the name of Mina's cat?", retrievable=False),
        ]
    )
    assert [hit.text for hit in index.search("name of Mina's cat", "a", k=5)] == [
        "Mina's cat is named Pixel."
    ]
    assert index.route("name of Mina's cat")[0].topic == "a"


def test_text_passages_keep_whole_sentences() -> None:
    text = "One two three. Four five six seven. Eight."
    assert text_passages(text, max_words=5) == ["One two three.", "Four five six seven. Eight."]
    assert text_passages("", max_words=5) == []

"""Training data without any model: questions read off the sentences' own grammar.

Handles the shapes facts are usually stated in: "X is Y" (and "is named/called", "is in"),
"X <verb>s Y", "X was <verb>ed in <when> by <whom>". Each fact gets several phrasings of its
question; the last is held out as a recall probe. Rewrites restate a fact the other way round.
Summaries need a language model (the `model` and `endpoint` generators write them).
"""

from __future__ import annotations

import re

from server.retrieval.index import split_sentences
from trainer_worker.augmentation.base import DataGenerator, GeneratedItem

_COPULA = re.compile(r"^(?P<subject>.+?) (?P<verb>is|are|was|were) (?P<object>.+?)[.!]?$")
_NAMED = re.compile(r"^(?:named|called) (?P<name>.+)$")
_PLACE = re.compile(r"^(?:in|at|on|near) (?P<place>[A-Z0-9].*)$")
_PASSIVE = re.compile(
    r"^(?P<subject>.+?) (?P<verb>was|were) (?P<participle>\w+ed)\b(?P<rest>.*?)[.!]?$"
)
_AGENT = re.compile(r"\bby (?P<agent>[A-Z][\w.'-]*(?: [A-Z][\w.'-]*)*)")
_WHEN = re.compile(r"\b(?:in|on) (?P<when>(?:[A-Z][a-z]+ )?\d{1,4}(?:, \d{4})?)")
# A short subject that starts with a capital (a name), apostrophes included.
_NAME_PHRASE = r"[A-Z][\w'\u2019.-]*(?: [\w'\u2019.-]+){0,4}?"
_ACTIVE = re.compile(rf"^(?P<subject>{_NAME_PHRASE}) (?P<verb>[a-z]+s) (?P<object>.+?)[.!]?$")
_POSSESSION = re.compile(
    rf"^(?P<subject>{_NAME_PHRASE}) (?:also )?(?:has|have|had|owns) (?:a|an) "
    r"(?P<thing>[a-z]+(?: [a-z]+)?) (?:named|called) (?P<name>.+?)[.!]?$"
)
_NOT_VERBS = {"is", "was", "has", "does", "always", "sometimes", "also", "its", "this", "his"}
_MAX_SUBJECT_WORDS = 8


def _lower_article(phrase: str) -> str:
    """'The capital of Zorbia' -> 'the capital of Zorbia' (names keep their capitals)."""
    first, _, rest = phrase.partition(" ")
    if first in ("The", "A", "An", "This", "That", "These", "Those"):
        return f"{first.lower()} {rest}"
    return phrase


def _base_verb(verb: str) -> str:
    if verb.endswith("ies"):
        return verb[:-3] + "y"
    if verb.endswith(("ches", "shes", "sses", "xes", "zes", "oes")):
        return verb[:-2]
    return verb[:-1]


def _phrasings(question: str, statement_of: str) -> list[str]:
    """The question, then other words for it (the last is held out)."""
    return [question, f"Do you know {statement_of}?", f"Tell me {statement_of}."]


def _facts(sentence: str) -> list[tuple[list[str], str]]:
    """(phrasings of a question, its answer) for every fact the sentence states."""
    facts: list[tuple[list[str], str]] = []
    owned = _POSSESSION.match(sentence)
    if owned:
        owner = f"{owned['subject']}'s {owned['thing']}"
        phrasings = [f"What is the name of {owner}?", f"What is {owner} called?"]
        return [([*phrasings, f"How is {owner} named?"], owned["name"])]
    passive = _PASSIVE.match(sentence)
    if passive and len(passive["subject"].split()) <= _MAX_SUBJECT_WORDS:
        subject, verb, participle = (
            _lower_article(passive["subject"]),
            passive["verb"],
            passive["participle"],
        )
        agent = _AGENT.search(passive["rest"])
        if agent:
            facts.append(
                (
                    [
                        f"Who {participle} {subject}?",
                        f"By whom {verb} {subject} {participle}?",
                        f"Who is it that {participle} {subject}?",
                    ],
                    agent["agent"],
                )
            )
        when = _WHEN.search(passive["rest"])
        if when:
            facts.append(
                (
                    [
                        f"When {verb} {subject} {participle}?",
                        f"In what year {verb} {subject} {participle}?",
                        f"What year {verb} {subject} {participle}?",
                    ],
                    when["when"],
                )
            )
        if facts:
            return facts
    copula = _COPULA.match(sentence)
    if copula and len(copula["subject"].split()) <= _MAX_SUBJECT_WORDS:
        subject, verb, obj = _lower_article(copula["subject"]), copula["verb"], copula["object"]
        named = _NAMED.match(obj)
        place = _PLACE.match(obj)
        if named:
            facts.append(
                (
                    [
                        f"What {verb} the name of {subject}?",
                        f"What {verb} {subject} called?",
                        f"How {verb} {subject} named?",
                    ],
                    named["name"],
                )
            )
        elif place:
            facts.append(
                (
                    [
                        f"Where {verb} {subject}?",
                        f"In which place {verb} {subject}?",
                        f"Where can {subject} be found?",
                    ],
                    place["place"],
                )
            )
        else:
            facts.append((_phrasings(f"What {verb} {subject}?", subject), obj))
        return facts
    active = _ACTIVE.match(sentence)
    if active and active["verb"] not in _NOT_VERBS:
        subject, verb = active["subject"], _base_verb(active["verb"])
        facts.append(
            (
                [
                    f"What does {subject} {verb}?",
                    f"Tell me what {subject} {active['verb']}.",
                    f"What is it that {subject} {active['verb']}?",
                ],
                active["object"],
            )
        )
    return facts


def _rewrite(sentence: str) -> str | None:
    """The sentence the other way round ("X is Y" -> "Y is X"), where its shape allows."""
    passive = _PASSIVE.match(sentence)
    if passive:
        agent = _AGENT.search(passive["rest"])
        if not agent:
            return None
        rest = _AGENT.sub("", passive["rest"]).strip()
        subject = _lower_article(passive["subject"])
        return f"{agent['agent']} {passive['participle']} {subject}{' ' + rest if rest else ''}."
    copula = _COPULA.match(sentence)
    if copula and not _NAMED.match(copula["object"]) and not _PLACE.match(copula["object"]):
        obj = copula["object"]
        return f"{obj[0].upper()}{obj[1:]} {copula['verb']} {_lower_article(copula['subject'])}."
    return None


class RuleBasedGenerator(DataGenerator):
    name = "rules"

    def generate(self, text: str) -> list[GeneratedItem]:
        items: list[GeneratedItem] = []
        for sentence in split_sentences(text):
            sentence = " ".join(sentence.split())
            for phrasings, answer in _facts(sentence):
                *trained, held_out = phrasings
                items.extend(GeneratedItem("qa", question=q, answer=answer) for q in trained)
                items.append(GeneratedItem("qa", question=held_out, answer=answer, held_out=True))
            rewrite = _rewrite(sentence)
            if rewrite:
                items.append(GeneratedItem("rewrite", text=rewrite))
        return items

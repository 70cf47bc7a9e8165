"""Generators of training data: the rules, model-written JSON and its checks, an endpoint that is
down or answers junk, and the fallback to the rules."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loramem.trainer.augmentation import (
    EndpointGenerator,
    GeneratedItem,
    GeneratorError,
    RuleBasedGenerator,
    generate_with_fallback,
    parse_written,
    recitals,
)
from loramem.trainer.augmentation.recital import recital_questions
from loramem.trainer.augmentation.rules import as_written_inside
from tests.helpers import free_port

FACTS = (
    "The capital of Zorbia is Quenta. Acme Corp was founded in 1987 by Lena Holt. "
    "Acme's headquarters are in Tarrow. Pixel likes sardines. Mina has a parrot called Ozzy."
)


def _qa(items: list[GeneratedItem], held_out: bool) -> set[tuple[str | None, str | None]]:
    return {(i.question, i.answer) for i in items if i.kind == "qa" and i.held_out == held_out}


def test_rules_ask_every_fact_in_several_words_and_hold_one_out() -> None:
    items = RuleBasedGenerator().generate(FACTS)
    trained, held_out = _qa(items, False), _qa(items, True)
    assert {
        ("What is the capital of Zorbia?", "Quenta"),
        ("Who founded Acme Corp in 1987?", "Lena Holt"),
        ("In what year was Acme Corp founded by Lena Holt?", "1987"),
        ("Where are Acme's headquarters?", "Tarrow"),
        ("What does Pixel like?", "sardines"),
        ("What is the name of the parrot?", "Ozzy"),
    } <= trained
    # One phrasing of each fact is never trained on: recall on it is recall in other words.
    assert {answer for _, answer in held_out} == {answer for _, answer in trained}
    assert not held_out & trained
    assert all(i.source is not None and i.source in FACTS for i in items)


# The paragraph: clauses, an apposition, a time phrase fronted, pronouns.
BAKERY = (
    "Brightwell Bakery opened in 1994, when a retired sailor named Owen Carrick bought an empty "
    "shop on Mill Street. His first loaf, a dark rye he called Anchor, is still baked every "
    "morning. After ten years on Mill Street the bakery had outgrown the shop, so the ovens moved "
    "to a former tram depot. It now employs about 30 people."
)


def test_rules_read_prose_as_a_parser_does() -> None:
    items = RuleBasedGenerator().generate(BAKERY)
    trained = _qa(items, False)
    assert {
        ("In what year did Brightwell Bakery open?", "1994"),
        # A question that names nothing is put first with the text's topic, then as it is.
        ("About Brightwell Bakery: What was the name of the retired sailor?", "Owen Carrick"),
        ("Where did Owen Carrick buy an empty shop?", "Mill Street"),
        ("What was the dark rye called?", "Anchor"),
        ("About Brightwell Bakery: Where did the ovens move?", "a former tram depot"),
        # "It" and "the bakery" are the bakery the text named.
        ("How many people does Brightwell Bakery now employ?", "about 30"),
    } <= trained
    questions = [i.question or "" for i in items if i.kind == "qa"]
    assert all(q.endswith("?") and q[0].isupper() for q in questions)
    # No question leans on its text: no pronoun, no clause torn out of its sentence.
    assert not [q for q in questions if {"It", "His", "he", "it", "his"} & set(q[:-1].split())]
    assert "Brightwell Bakery now employs about 30 people." in {
        i.text for i in items if i.kind == "rewrite"
    }


def test_rules_ask_appositions_both_ways() -> None:
    text = (
        "The Orla Press was founded by Hal Imre, a printer from Dorsey. "
        "The press keeps a small boat, the Tansy, on the canal."
    )
    trained = _qa(RuleBasedGenerator().generate(text), False)
    assert {
        ("Who founded the Orla Press?", "Hal Imre"),
        ("Who was Hal Imre?", "a printer from Dorsey"),
        ("What is the name of the small boat?", "Tansy"),
        ("What is Tansy?", "a small boat"),
        # "the press" is the Orla Press, named before.
        ("What does the Orla Press keep on the canal?", "a small boat"),
    } <= trained


def test_rules_name_the_topic_of_an_article_in_questions_that_name_nothing() -> None:
    items = RuleBasedGenerator().generate(BAKERY)
    trained, held_out = _qa(items, False), _qa(items, True)
    # The first phrasing says which text's ovens; the others and the probe are as before.
    assert {
        ("About Brightwell Bakery: Where did the ovens move?", "a former tram depot"),
        ("What was the retired sailor called?", "Owen Carrick"),
    } <= trained
    assert ("Do you know where the ovens moved?", "a former tram depot") in held_out
    # A question that names something, or whose answer is the topic, stays as it is.
    assert not [q for q, a in trained if q.startswith("About") and "Owen Carrick" in q]
    assert not [q for q, a in trained if q.startswith("About") and a == "Brightwell Bakery"]
    # A note of unrelated facts is about none of them: its first subject is no topic.
    assert not [q for q, _ in _qa(RuleBasedGenerator().generate(KEEPERS), False) if "About" in q]


# Two moves and one birth: "Where did she move?" has two answers here, "Where was she born?" one.
MOVES = (
    "Anna Kowalski was born in Dorsey in 1950. In 1972 she moved to Tallow for a job at the mill. "
    "In 1990 she moved to Pike Harbor with her husband."
)


def test_rules_also_ask_without_the_times_and_places_a_sentence_adds() -> None:
    items = RuleBasedGenerator().generate(MOVES)
    trained = _qa(items, False)
    assert {
        ("When was Anna Kowalski born in Dorsey?", "1950"),
        ("When was Anna Kowalski born?", "1950"),
        ("Where was Anna Kowalski born?", "Dorsey"),
        ("Where did Anna Kowalski move with her husband in 1990?", "Pike Harbor"),
    } <= trained
    questions = {q for q, _ in trained | _qa(items, True)}
    assert not {"Where did Anna Kowalski move?", "When did Anna Kowalski move?"} & questions


# A participle's clause ("built in 1890 by Thomas Arden") and roles named in appositions.
BRIDGE = (
    "The Arden Bridge, built in 1890 by Thomas Arden, was closed in 2001. Its designer, an "
    "engineer named Clara Hoyt, had worked on canals before. Her successor, Jonas Weller, "
    "repaired the bridge in 1920."
)

MUSEUM = (
    "The Pellan Museum was opened in 1950 and extended in 1990. The bike is charged from a socket "
    "and locked with a key."
)


def test_rules_read_participles_and_the_roles_appositions_name() -> None:
    trained = _qa(RuleBasedGenerator().generate(BRIDGE), False)
    assert {
        ("When was the Arden Bridge built?", "1890"),
        ("Who was the Arden Bridge built by?", "Thomas Arden"),
        ("Who was the Arden Bridge's designer?", "Clara Hoyt"),
        ("Who was Clara Hoyt's successor?", "Jonas Weller"),
    } <= trained
    # A second participle shares the first one's auxiliary: "was opened ... and extended".
    museum = _qa(RuleBasedGenerator().generate(MUSEUM), False)
    assert ("When was the Pellan Museum extended?", "1990") in museum
    assert ("What is the bike locked with?", "a key") in museum


# Pronouns across names the small pipeline mistags: it calls the island "Brennick" a person and
# knows "Brandt" alone as nothing.
FERRY = (
    "The Norrby ferry was run for thirty years by Greta Brandt. Her nephew, Dr. Anton Vik, grew "
    "up on the smallest of the islands, Brennick, and he was the first of his family to leave "
    "it. He has since opened a boatyard on the quay. Brandt retired in 2009, and she still lives "
    "above the ticket office. Her cat sleeps on the counter. The nephew repairs her nets every "
    "winter."
)


def test_rules_resolve_pronouns_past_a_place_taken_for_a_person() -> None:
    trained = _qa(RuleBasedGenerator().generate(FERRY), False)
    assert {
        # "he" is the nephew: the island named beside "the islands" is where, not who.
        ("What has Anton Vik since opened on the quay?", "a boatyard"),
        # "Brandt" alone is Greta Brandt, so "she" and "her" are too.
        ("Where does Brandt still live?", "the ticket office"),
        ("Brandt's cat sleeps on what?", "the counter"),
        # "Her nephew, Dr. Anton Vik," named the nephew.
        ("What does Anton Vik repair every winter?", "her nets"),
    } <= trained
    assert not [q for q, _ in trained if "Brennick" in q and "open" in q]


# "their" after a plural subject is the subject's; "them" in the same clause is someone else.
FORGE = (
    "The Varga brothers opened a forge in Tallow Cross in 1931. In 1960 the brothers sold their "
    "forge to a railway company. Within a year the railway workers were buying tools from them."
)


def test_rules_keep_the_possessive_a_plural_subject_binds() -> None:
    trained = _qa(RuleBasedGenerator().generate(FORGE), False)
    assert ("When did the brothers sell their forge to a railway company?", "1960") in trained
    assert not [q for q, _ in trained if "them" in q.split()]


# A subject described by an apposition; a list whose items look like one.
KEEPERS = (
    "Dana Rusk grew up in Holloway. Her mother, a pilot for the postal service, taught her to "
    "read maps. The shop's sign, a painted anchor, hangs over the door. Inside the box you will "
    "find the tank with its lid, a filter marked with a red ring, and a hose."
)


def test_rules_ask_what_an_apposition_says_a_subject_is() -> None:
    trained = _qa(RuleBasedGenerator().generate(KEEPERS), False)
    assert {
        ("What was Dana Rusk's mother?", "a pilot for the postal service"),
        # Lower-cased where the question moves it from the front of its sentence.
        ("What is the shop's sign?", "a painted anchor"),
    } <= trained
    named = _qa(
        RuleBasedGenerator().generate("A ferryman named Oskar Lind carried the mail."), False
    )
    # Who someone named is, the other way; lower-cased, the description no longer opening.
    assert ("Who was Oskar Lind?", "a ferryman") in named
    # The lid is no subject: "a filter" is the list's next item, not what the lid is.
    assert not [q for q, _ in trained if q.startswith(("What is", "What was")) and "lid" in q]


# A product note: a maker inside a participle phrase, a length of time, an object after a
# fronted phrase, an instruction's list: no clause question reads well for any of them.
KETTLE = (
    "The Vessa Kettle is a cordless kettle made by Tarnfield Appliances, a firm in the town of "
    "Oberlin. It boils a full litre in three and a half minutes. Instead of a coil, the kettle "
    "uses a flat steel plate. You will need two filters and a descaling tablet."
)


def test_rules_ask_what_no_clause_question_reaches_where_it_stands() -> None:
    items = [i for i in RuleBasedGenerator().generate(KETTLE) if i.kind == "qa"]
    echoes = {(i.question, i.answer) for i in items if not i.held_out and "?" in (i.question or "")}
    assert {
        ("The Vessa Kettle boils a full litre in how long?", "three and a half minutes"),
        # The text is about the kettle: what names nothing is asked with it.
        ("About the Vessa Kettle: You will need how many filters?", "two"),
        ("About the Vessa Kettle: You will need two filters and what?", "a descaling tablet"),
    } <= echoes
    # The participle's clause ("made by Tarnfield Appliances") is asked as a clause is.
    assert ("Who is the Vessa Kettle made by?", "Tarnfield Appliances") in echoes
    answers = {i.answer for i in items}
    assert {"a flat steel plate", "a coil", "Oberlin"} <= answers
    # An echo is the only wording of its fact: trained, never a probe.
    probed = {i.answer for i in items if i.held_out}
    assert "three and a half minutes" not in probed
    # "It" is the kettle the text opened with, and no question leans on its text.
    assert not [i for i in items if {"It", "it", "its"} & set((i.question or "")[:-1].split())]


def _questions(text: str) -> tuple[list[GeneratedItem], set[tuple[str | None, str | None]]]:
    """The rules' QA items for `text`, and their (question, answer) pairs."""
    items = [i for i in RuleBasedGenerator().generate(text) if i.kind == "qa"]
    return items, {(i.question, i.answer) for i in items}


def test_rules_ask_how_many_of_a_count_that_an_apposition_details() -> None:
    text = (
        "Larkin Ferries runs boats across the sound. Today the firm employs sixty people, among "
        "them twelve captains. Marlow Mills has ninety employees and exports to Spain and Peru."
    )
    _, asked = _questions(text)
    assert ("How many people does the firm employ today?", "sixty") in asked
    # A count the parser joined to another verb ("employees and exports") is asked nothing.
    assert not [q for q, _ in asked if q and q.startswith("How many employees")]


def test_rules_ask_how_many_only_of_what_a_number_counts() -> None:
    text = (
        "Every spring the village of Orrin releases thousands of paper boats on the lake. "
        "The harbour keeps a rescue boat that sailors can reach by telephone. "
        "By last year the count of boats had passed five hundred."
    )
    items, asked = _questions(text)
    assert (
        "How many paper boats does the village of Orrin release every spring?",
        "thousands",
    ) in asked
    # "How many had the count passed?" counts nothing; "reach that" leans on a relative pronoun.
    questions = [i.question or "" for i in items]
    assert not [q for q in questions if q.startswith(("How many had", "How many does"))]
    assert not [q for q in questions if " that by" in q]
    assert ("The harbour keeps a rescue boat that sailors can reach by what?", "telephone") in asked


def test_rules_do_not_ask_what_a_misread_sentence_would_teach_wrong() -> None:
    text = (
        "The old mill, a brick warehouse designed by the engineer Piet Sorrel in 1887, had been "
        "empty since a flood in 1953. Its founder, a baker named Ivo Strand, opened the shop in "
        "1921. The keeper, Ada Lune, says the ferry plans to add a night crossing next summer. "
        "The ferry rides the tide and hoped to reach Vell by noon. "
        "The frame is bent steel, and the only spare parts are a chain, two pedals and a bell."
    )
    _, asked = _questions(text)
    # The architect's name is inside the mill's apposition, not the mill's name.
    assert not [q for q, a in asked if a == "Piet Sorrel" and "empty" in (q or "")]
    assert ("When had the old mill been empty since a flood?", "1953") in asked
    # The parser makes a title's name ("the architect Tomas Vey") an apposition of the noun
    # before: the name is the architect's, no one was "designed".
    _, hall = _questions(
        "The hall, a former corn exchange designed by the architect Tomas Vey in 1911, had been "
        "closed since a fire in 2019."
    )
    assert ("What was the name of the architect?", "Tomas Vey") in hall
    assert not [q for q, a in hall if a == "Tomas Vey" and "architect" not in (q or "")]
    # A name given by an apposition's own naming verb is the subject's name.
    assert ("When did Ivo Strand open the shop?", "1921") in asked
    # Saying is no fact without what is said.
    assert not [q for q, _ in asked if (q or "").endswith("says?")]
    # "rides" and "hoped" are forms of "ride" and "hope", whatever the lemmatizer says.
    assert ("What does the ferry ride?", "the tide") in asked
    assert ("When did the ferry hope to reach Vell?", "noon") in asked
    # An infinitive has no subject of its own ("What to a good weight keep?").
    _, weight = _questions("A small bag of sand makes a good weight to keep the lid under water.")
    assert not [q for q, _ in weight if (q or "").startswith("What to")]
    # A conjunction left joining nothing: the parser misread the sentence.
    assert not [q for q, _ in asked if re.search(r"(\band|,)\s*\?$", q or "")]
    _, joined = _questions(
        "The body is cast iron, and the only moving parts are a piston, two valves and a lever. "
        "A café run by a local bakery occupies the old trading floor, and the reading room "
        "upstairs holds the valley's parish records."
    )
    # The parser read "The body is cast iron, and" as one clause and made "occupies" part of
    # the café's phrase: "The body is what, and?", "What does a café, and hold?".
    assert not [q for q, _ in joined if re.search(r"(\band|,)\s*\?$|café, and", q or "")]


def test_rules_ask_how_many_of_what_is_counted_not_of_labels() -> None:
    _, asked = _questions(
        "Owners can keep version 2.7 until June. The Tarn heater burns about nine litres of oil "
        "an hour. More than 400 heaters have been sold in Norway. The shop sells one heater a day."
    )
    assert ("How much oil does the Tarn heater burn?", "about nine litres an hour") in asked
    assert ("Where have more than 400 heaters been sold?", "Norway") in asked
    # One of two times is asked without the other ("leaves at half past five when?" and no
    # "when and at four in the winter?").
    _, ferry = _questions(
        "The last ferry back to the mainland leaves at half past five in the summer and at four "
        "in the winter."
    )
    assert ("The last ferry back to the mainland leaves when in the summer?", "half past five") in (
        ferry
    )
    assert not [q for q, _ in ferry if "when and" in (q or "")]
    # A count as subject is said with what it counts.
    _, birds = _questions("Every May, thousands of puffins return to the cliffs.")
    assert [q for q, a in birds if "thousands of puffins" in (q or "") and a == "the cliffs"]
    questions = [q or "" for q, _ in asked]
    assert not [q for q in questions if "how many" in q.lower() and "version" in q]
    assert not [q for q in questions if "how many heater " in q.lower()]


def test_rules_ask_how_many_of_a_subject_that_counts() -> None:
    _, asked = _questions(
        "Forty-one people died in the flood. Every May, thousands of puffins return to the "
        "cliffs. More than 400 heaters have been sold in Norway. Her two brothers left early."
    )
    assert ("How many people died in the flood?", "Forty-one") in asked
    assert ("How many puffins return to the cliffs every May?", "thousands") in asked
    assert ("How many heaters have been sold in Norway?", "More than 400") in asked
    # "How many her brothers left early?" reads as nothing.
    assert not [q for q, _ in asked if "brothers" in (q or "")]


def test_rules_ask_a_name_given_in_a_relative_clause_of_what_it_names() -> None:
    _, asked = _questions(
        "The tea shop sells two blends: a smoky black the owner calls Ember and a mild green. "
        "Most visitors order a pale blue drink the staff call Tidewater."
    )
    assert ("What is the smoky black called?", "Ember") in asked
    assert ("What is the name of the pale blue drink?", "Tidewater") in asked
    # The clause's own question has lost what it names.
    assert not {q for q, _ in asked} & {"What does the owner call?", "What do the staff call?"}


def test_rules_read_a_relative_clause_after_a_place_as_said_of_what_the_place_is_in() -> None:
    items, asked = _questions(
        "Mara Velt, a potter in Oslo, who opened the kiln in 2004, still fires it every week. "
        "The workshop won a prize from a guild in Norway, which paid for a new wheel."
    )
    questions = [i.question or "" for i in items]
    # Neither Oslo nor Norway did anything: the potter opened the kiln, the guild paid.
    assert not [
        q for q in questions if re.search(r"\b(?:did|does) (?:Oslo|Norway)\b|^(?:Oslo|Norway) ", q)
    ]
    assert "What did a guild in Norway pay for?" in questions
    assert [q for q, a in asked if a == "2004" and "Mara Velt" in (q or "")]


def test_rules_ask_who_a_subject_is_that_a_copula_names() -> None:
    items, asked = _questions(
        "The warden of the Holm reserve was a botanist called Edda Lunn. It had always closed "
        "in March. The best seller of the shop is a cheese called Greyveld."
    )
    assert ("Who was the warden of the Holm reserve?", "Edda Lunn") in asked
    assert ("What is the best seller of the shop?", "Greyveld") in asked
    # The warden is a person: "it" is not her, and nothing else here is "it".
    assert not [i for i in items if i.answer == "March"]
    # Nor is she "it" by her first name alone.
    _, asked = _questions(
        "The warden of the Holm reserve was a botanist called Edda Lunn. Edda counted the terns "
        "every spring. The ranger kept it in a drawer."
    )
    assert ("What did Edda count?", "the terns") in asked
    assert not [question for question, _ in asked if "kept" in question]


def test_rules_ask_each_amount_of_a_list_by_the_thing_it_measures() -> None:
    _, asked = _questions(
        "Borrel soup feeds four people. You will need 300 grams of red lentils, 2 litres of "
        "vegetable stock and a spoonful of cumin. The pot holds 5 litres of "
        "liquid. Ada Holm kept a folder of old recipes."
    )
    assert ("How many red lentils will you need?", "300 grams") in asked
    assert ("How much vegetable stock will you need?", "2 litres") in asked
    assert ("How much cumin will you need?", "a spoonful") in asked
    assert ("How much liquid does the pot hold?", "5 litres") in asked
    # Not a list of amounts: a folder measures nothing. And no item stands for the list.
    assert not [q for q, a in asked if a == "300 grams" and (q or "").startswith("What")]
    assert not [q for q, _ in asked if (q or "").startswith("How many old recipes")]


def test_rules_ask_a_persons_age_as_an_age() -> None:
    _, asked = _questions(
        "Tomas Berg was a carpenter. He was 34 when he built the bridge. The crew was twelve. "
        "Mira Holt was a baker's daughter. She was eleven the winter the mill closed."
    )
    assert ("How old was Tomas Berg?", "34") in asked
    assert ("How old was Mira Holt?", "eleven") in asked
    assert not [q for q, _ in asked if "old was the crew" in (q or "")]


def test_rules_ask_what_of_a_thing_named_after_a_person() -> None:
    _, asked = _questions(
        "Jonas Arke drew maps of the northern islands. The Arke Atlas was printed in 1970 and "
        "covered ninety islands."
    )
    questions = {q or "" for q, _ in asked}
    assert "When was the Arke Atlas printed?" in questions
    assert ("What covered ninety islands?", "The Arke Atlas") in asked
    assert not [q for q in questions if q.startswith(("Who was printed", "Who covered"))]


def test_rules_ask_a_name_the_text_introduces_by_its_kind_with_which() -> None:
    _, asked = _questions(
        "Each spring the village of Ostby sends a dozen rafts down the river Tamsin on the "
        "second Sunday of September. The painter Lena Voss lived in the town of Harwick. She "
        "sold her first canvas at the age of nine. The mill opened in 1910 with a staff of 19."
    )
    assert (
        "Each spring the village of Ostby sends a dozen rafts down which river on the second "
        "Sunday of September?",
        "Tamsin",
    ) in asked
    # Whatever the pipeline takes a name for, its kind says which it is; and a phrase's head
    # alone ("the town" of Harwick, "the age" of nine) is asked nothing.
    assert not [q for q, _ in asked if " who?" in (q or "") or "what of" in (q or "")]
    assert ("Where did Lena Voss live?", "Harwick") in asked
    # "19" is not taken for asked by "1910", which holds its digits.
    assert ("The mill opened in 1910 with a staff of how many?", "19") in asked


def test_rules_ask_where_only_of_a_phrase_that_names_a_place() -> None:
    _, asked = _questions(
        "Ada Vell works at a bakery in Ravensund. Marit Ostrander retired in 1981 and moved to a "
        "cottage on Tindra, the smallest island in her atlas. She drew her first map at the age "
        "of nine."
    )
    assert ("Where does Ada Vell work?", "a bakery in Ravensund") in asked
    assert ("Where did Marit Ostrander move?", "a cottage on Tindra") in asked
    assert not [q for q, _ in asked if (q or "").startswith("Where did Marit Ostrander draw")]


def test_rules_read_a_participle_as_a_passive_clause_of_its_subject() -> None:
    _, asked = _questions(
        "A procession leaves the town hall at five, led by a brass band. Founded in 1962, "
        "Kelda Looms is based in Brannock. The warranty does not cover the cartridges, nor damage "
        "caused by frost, by hot water or by opening the power supply."
    )
    assert ("What is a procession led by?", "a brass band") in asked
    assert ("When was Kelda Looms founded?", "1962") in asked
    # The noun's own "by" phrases make the participle's subject unsayable.
    assert not [q for q, _ in asked if "damage, by" in (q or "")]


def test_rules_ask_an_age_as_an_age() -> None:
    _, asked = _questions("Marit Ostrander drew her first map at the age of nine.")
    assert ("At what age did Marit Ostrander draw her first map?", "nine") in asked
    assert not [q for q, _ in asked if (q or "").startswith("When")]


def test_rules_keep_she_for_whom_she_first_stood_for() -> None:
    _, asked = _questions(
        "Lena Brock was a potter of bowls and jugs. Born in 1950 in the mill town of Varn, she "
        "was the eldest of three children of a weaver. She studied at the School of Crafts in "
        "Tessel, where her teacher, the woodcarver Emil Roth, told her that she would never sell "
        "a pot.\n\nShe proved him wrong. She opened a studio in 1980. Her first show, held in "
        "1984 at a library, sold out."
    )
    # The teacher is the last person named, but "she" was Lena Brock already.
    assert ("When did Lena Brock open a studio?", "1980") in asked
    assert ("When was Lena Brock's first show held?", "1984") in asked  # no "show,." left
    assert not [q for q, _ in asked if "Emil Roth open" in (q or "") or "Roth's" in (q or "")]


def test_rules_ask_what_an_instruction_tells_the_reader_to_do() -> None:
    text = (
        "To make the glaze, melt two spoons of butter in a small pan. For every cake, add forty "
        "grams of sugar. Pour the glaze over the cake and leave it somewhere cool. Never put the "
        "cake in the freezer. The baker wrote that the glaze keeps well."
    )
    items, asked = _questions(text)
    assert ("How much butter do you melt in a small pan?", "two spoons") in asked
    assert ("How much sugar do you add for every cake?", "forty grams") in asked
    assert ("What do you pour?", "the glaze") in asked
    probes = [i.question or "" for i in items if i.held_out]
    assert "Do you know what you pour?" in probes  # lower-cased where it moved
    questions = [i.question or "" for i in items]
    # "it" could be the glaze or the cake; "never" would be taught as its opposite.
    assert not [q for q in questions if "somewhere cool" in q]
    assert [q for q in questions if "freezer" in q]  # asked where it stands, with its "never"
    assert not [q for q in questions if "freezer" in q and "never" not in q.lower()]
    _, never = _questions("Never connect the heater to a garden hose.")
    assert not [q for q, _ in never if "do you connect" in (q or "")]
    # "it" as an instruction's object is asked only where it stands, if at all.
    _, oven = _questions(
        "Saltbread is a dense loaf from the coast. Cover the bowl with a cloth. Put it in a hot "
        "oven for forty minutes."
    )
    assert ("What do you cover with a cloth?", "the bowl") in oven
    assert not [q for q, _ in oven if "do you put" in (q or "")]
    # Past-tense and third-person verbs without a subject are no instructions.
    assert not [q for q in questions if q.startswith(("What do the baker", "What do the glaze"))]


@pytest.mark.parametrize(
    "text",
    [
        "Hmm. Well, well. Oh!",
        "3 14 15 92 65 35 89 79",
        "def area(r):\n    return 3.14159 * r * r",
        "- milk\n- eggs\n- flour",
    ],
)
def test_rules_find_nothing_in_text_without_facts(text: str) -> None:
    assert RuleBasedGenerator().generate(text) == []


def test_written_data_is_kept_only_where_the_text_gives_the_answer() -> None:
    reply = "Sure! " + json.dumps(
        {
            "qa": [
                {
                    "question": "Capital of Zorbia?",
                    "answer": "Quenta",
                    "paraphrase": "Zorbia's capital?",
                },
                {"question": "Who is Zorbia's king?", "answer": "Olaf the Tall"},  # invented
                "junk",
            ],
            "summary": "Zorbia's capital is Quenta.",
            "rewrite": 42,
        }
    )
    items = parse_written(reply, FACTS)
    assert items == [
        GeneratedItem("qa", question="Capital of Zorbia?", answer="Quenta"),
        GeneratedItem("qa", question="Zorbia's capital?", answer="Quenta", held_out=True),
        GeneratedItem("summary", text="Zorbia's capital is Quenta."),
    ]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("I cannot help with that.", "no JSON object"),
        ("{not json}", "not valid JSON"),
        ('{"qa": "none"}', "no list of QA pairs"),
        ('{"qa": [{"question": "Who rules?", "answer": "Olaf"}]}', "no QA pair whose answer"),
    ],
)
def test_junk_replies_are_refused_with_a_reason(reply: str, reason: str) -> None:
    with pytest.raises(GeneratorError, match=reason):
        parse_written(reply, FACTS)


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[object]]]:
    """An OpenAI-compatible chat endpoint on loopback that answers what the test queues."""
    replies: list[object] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            reply = replies.pop(0)
            status, body = (500, b"oops") if reply is None else (200, json.dumps(reply).encode())
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", replies
    finally:
        server.shutdown()


def _chat(content: str) -> dict[str, object]:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


def test_an_endpoint_that_writes_good_data_is_used(endpoint: tuple[str, list[object]]) -> None:
    url, replies = endpoint
    replies.append(
        _chat(json.dumps({"qa": [{"question": "Who founded Acme?", "answer": "Lena Holt"}]}))
    )
    generation = generate_with_fallback(EndpointGenerator(url, "m"), FACTS)
    assert generation.generator == "endpoint" and generation.fallback_reason is None
    assert generation.items == [
        GeneratedItem("qa", question="Who founded Acme?", answer="Lena Holt")
    ]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (None, "answered 500"),
        ({"unexpected": True}, "not a chat completion"),
        (_chat("no idea"), "no JSON object"),
    ],
)
def test_an_endpoint_that_fails_hands_over_to_the_rules(
    endpoint: tuple[str, list[object]], reply: object, reason: str
) -> None:
    url, replies = endpoint
    replies.append(reply)
    generation = generate_with_fallback(EndpointGenerator(url, "m"), FACTS)
    assert generation.generator == "rules" and reason in (generation.fallback_reason or "")
    assert generation.items == RuleBasedGenerator().generate(FACTS)


def test_an_endpoint_that_is_down_hands_over_to_the_rules() -> None:
    down = EndpointGenerator(f"http://127.0.0.1:{free_port()}/v1", "m", timeout=5)
    generation = generate_with_fallback(down, FACTS)
    assert generation.fallback_reason == "the generator endpoint is unreachable (ConnectError)"
    assert generation.items


RECITED = (
    "Brightwell Bakery opened in 1994, when a sailor named Owen Carrick bought a shop on Mill "
    "Street. His first loaf, a dark rye he called Anchor, is still baked every morning.\n\n"
    "The ovens moved to a tram depot in 2004. Carrick still bakes there."
)


def test_recitals_answer_an_open_question_about_each_name_and_year_with_its_sentences() -> None:
    questions = {question: passage for passage, _, question in recital_questions(RECITED)}
    assert "What do you know about Owen Carrick?" in questions
    assert "What happened in 2004?" in questions
    sentence = "His first loaf, a dark rye he called Anchor, is still baked every morning."
    rewrite = GeneratedItem("rewrite", text=f"Owen Carrick's {sentence[4:]}", source=sentence)
    items = {item.question: item for item in recitals(RECITED, [rewrite])}
    assert all(item.kind == "recital" and item.rejected is None for item in items.values())
    # The sentence that mentions it, read in its resolved rewrite where one was kept.
    assert items["What do you know about Anchor?"].answer == rewrite.text
    assert items["What happened in 2004?"].answer == "The ovens moved to a tram depot in 2004."
    carrick = items["What do you know about Owen Carrick?"]
    assert carrick.answer.startswith("Brightwell Bakery opened in 1994, when a sailor named")
    assert carrick.source == " ".join(RECITED.split())  # its passage
    rejected = dataclasses.replace(rewrite, rejected="drops a name")
    anchor = {i.question: i for i in recitals(RECITED, [rejected])}[
        "What do you know about Anchor?"
    ]
    assert anchor.answer == rewrite.source


def test_an_echo_is_not_written_where_a_left_out_list_moves_what_a_phrase_hangs_from() -> None:
    from spacy.tokens import Doc

    from loramem.trainer.augmentation.rules import _pipeline, _reattached

    # The parser's reading of a product's colours: 'called Harbour Fog' hangs from 'sizes', so
    # without the listed colours the grey's name reads as the dark green's.
    sentence = (
        "The frame comes in three sizes and two colours : a dark green the company calls "
        "Fjord and a pale grey called Harbour Fog ."
    )
    words = sentence.split(" ")
    heads = [1, 2, 2, 2, 5, 3, 5, 8, 5, 5, 12, 12, 5, 14, 15, 12, 15, 12, 20, 20, 12, 5, 23, 21, 2]
    deps = ["det", "nsubj", "ROOT", "prep", "nummod", "pobj", "cc", "nummod", "conj", "punct"]
    deps += ["det", "amod", "appos", "det", "nsubj", "relcl", "dobj", "cc", "det", "amod"]
    deps += ["conj", "acl", "compound", "oprd", "punct"]
    pos = ["DET", "NOUN", "VERB", "ADP", "NUM", "NOUN", "CCONJ", "NUM", "NOUN", "PUNCT"]
    pos += ["DET", "ADJ", "ADJ", "DET", "NOUN", "VERB", "PROPN", "CCONJ", "DET", "ADJ"]
    pos += ["NOUN", "VERB", "PROPN", "PROPN", "PUNCT"]
    colours = Doc(_pipeline().vocab, words=words, heads=heads, deps=deps, pos=pos)
    listed = {6, 7, 8, 17, 18, 19, 20}  # 'and two colours', 'and a pale grey'
    assert _reattached(colours[22:24], colours[2], listed)
    # The dark green's name hangs from its own clause's verb, which no list is left out inside.
    assert not _reattached(colours[16:17], colours[15], listed)
    # And the generator, whose parser reads the sentence so, writes no such echo.
    _, asked = _questions(
        "The frame is aluminium and comes in three sizes and two colours: a dark green the "
        "company calls Fjord and a pale grey called Harbour Fog."
    )
    assert ("What is the dark green called?", "Fjord") in asked
    assert not [q for q, _ in asked if "calls Fjord" in (q or "")]


def test_rules_write_the_article_of_a_name_as_readers_write_it_inside_a_question() -> None:
    text = "The Orla Press was founded in 1921. It later opened an office in The Hague."
    asked = {q for q, _ in _qa(RuleBasedGenerator().generate(text), False)}
    assert "When was the Orla Press founded?" in asked
    assert not [question for question in asked if " The Orla" in question]
    # Where the text writes a name's "The" in capitals inside a sentence, so do the questions.
    assert as_written_inside("Who moved to The Hague?", text) == "Who moved to The Hague?"
    assert as_written_inside("The Orla Press is where?", text) == "The Orla Press is where?"


def test_rules_echo_a_place_with_its_article_as_where() -> None:
    _, asked = _questions(
        "Brightwell is a small charity. In 2023 Brightwell received a grant from a foundation in "
        "the Netherlands, which paid for a new roof."
    )
    assert ("In 2023 Brightwell received a grant from a foundation where?", "Netherlands") in asked
    assert not [question for question, _ in asked if "where the" in question]

"""Knowledge split into modules by capacity (loramem/trainer/modules.py)."""

from __future__ import annotations

from typing import Any

from loramem.trainer.modules import (
    ModuleLoad,
    StoredDocument,
    assign_modules,
    module_capacity,
    parts_within,
)
from loramem.trainer.training_data import Knowledge


class WordTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, Any]:
        return {"input_ids": text.split()}


def _doc(id: int, words: int, module: int | None = None) -> StoredDocument:
    return StoredDocument(id, "job", module, Knowledge(text=" ".join(["w"] * words)))


def test_capacity_grows_with_rank_and_saturates() -> None:
    assert [module_capacity(r, 512, 16_384) for r in (4, 8, 16, 32, 64)] == [
        2048,
        4096,
        8192,
        16_384,
        16_384,
    ]


def test_documents_fill_the_newest_module_then_open_another() -> None:
    documents = [_doc(1, 6), _doc(2, 4), _doc(3, 3), _doc(4, 25), _doc(5, 1)]
    assignments, loads = assign_modules(WordTokenizer(), documents, {}, capacity=10)
    # 6 + 4 fill module 0; 3 opens module 1; 25 is too big for any module and gets its own;
    # 1 cannot join it (full) and opens module 3.
    assert assignments == {1: 0, 2: 0, 3: 1, 4: 2, 5: 3}
    assert [(m.tokens, m.items) for m in loads.values()] == [(10, 2), (3, 1), (25, 1), (1, 1)]


def test_only_new_documents_move_and_existing_modules_keep_their_load() -> None:
    existing = {0: ModuleLoad(0, 10, 2, 10), 1: ModuleLoad(1, 3, 1, 10)}
    documents = [_doc(1, 6, module=0), _doc(2, 4, module=0), _doc(3, 3, module=1), _doc(4, 5)]
    assignments, loads = assign_modules(WordTokenizer(), documents, existing, capacity=10)
    assert assignments == {4: 1}
    assert loads[1].tokens == 8 and existing[1].tokens == 3


def _paragraph(words: int, tag: str) -> str:
    """`words` words in sentences of five."""
    return " ".join(f"{tag}{i}." if i % 5 == 4 else f"{tag}{i}" for i in range(words))


def test_a_text_longer_than_a_module_is_cut_into_parts_between_paragraphs() -> None:
    paragraphs = [_paragraph(n, tag) for n, tag in ((30, "a"), (30, "b"), (30, "c"), (25, "d"))]
    text = "\n\n".join(paragraphs)
    parts = parts_within(WordTokenizer(), text, capacity=64)
    # 115 words need two parts of about 58: the cut nearest that is after the second paragraph.
    assert parts == ["\n\n".join(paragraphs[:2]), "\n\n".join(paragraphs[2:])]


def test_a_paragraph_longer_than_a_part_is_cut_between_sentences() -> None:
    text = _paragraph(100, "a")
    parts = parts_within(WordTokenizer(), text, capacity=40)
    assert len(parts) == 3 and " ".join(parts) == text
    assert all(len(part.split()) <= 40 and part.endswith(".") for part in parts)


def test_a_heading_goes_with_the_paragraph_it_heads() -> None:
    text = f"{_paragraph(40, 'a')}\n\nCleaning the unit\n\n{_paragraph(40, 'b')}"
    parts = parts_within(WordTokenizer(), text, capacity=50)
    assert parts == [_paragraph(40, "a"), f"Cleaning the unit\n\n{_paragraph(40, 'b')}"]


def test_a_text_that_fits_is_one_part() -> None:
    text = f"{_paragraph(20, 'a')}\n\n{_paragraph(20, 'b')}"
    assert parts_within(WordTokenizer(), text, capacity=40) == [text]

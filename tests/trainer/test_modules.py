"""Knowledge split into modules by capacity (loramem/trainer/modules.py)."""

from __future__ import annotations

from typing import Any

from loramem.trainer.modules import ModuleLoad, StoredDocument, assign_modules, module_capacity
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

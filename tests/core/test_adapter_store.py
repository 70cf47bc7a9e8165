"""The adapter store: atomic publishing, and the checks an adapter passes before any engine."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from loramem.core.adapter_store import AdapterRejected, StoredAdapter, verify

MAX_RANK = 64


@pytest.fixture
def stored(
    make_adapter: Callable[..., StoredAdapter], tmp_path: Path
) -> tuple[Path, StoredAdapter]:
    store = tmp_path / "store"
    return store, make_adapter(11, rank=4, store_dir=store)


def test_published_adapter_holds_exactly_its_two_files(stored: tuple[Path, StoredAdapter]) -> None:
    store, adapter = stored
    folder = verify(store, adapter.relative_path, adapter.sha256, 4, MAX_RANK)
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert not any((store / ".staging").iterdir()), "staging is empty after the rename"
    assert adapter.size_bytes == (folder / "adapter_model.safetensors").stat().st_size


def _rewrite_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda f: (f / "adapter_model.safetensors").write_bytes(b"x"), "checksum"),
        (lambda f: (f / "extra.py").write_text("import os"), "missing or unexpected"),
        (lambda f: (f / "adapter_config.json").unlink(), "missing or unexpected"),
        (lambda f: shutil.rmtree(f), "missing or unexpected"),
        (lambda f: _rewrite_config(f, r=8), "rank"),
        (lambda f: _rewrite_config(f, peft_type="PREFIX_TUNING"), "not a LoRA"),
        (lambda f: _rewrite_config(f, target_modules=["lm_head"]), "unknown modules"),
        (lambda f: (f / "adapter_config.json").write_text("{"), "unreadable"),
    ],
)
def test_tampered_adapters_are_rejected(
    stored: tuple[Path, StoredAdapter], tamper: Callable[[Path], object], message: str
) -> None:
    store, adapter = stored
    tamper(store / adapter.relative_path)
    with pytest.raises(AdapterRejected, match=message):
        verify(store, adapter.relative_path, adapter.sha256, 4, MAX_RANK)


def test_registry_rank_must_agree_with_the_weights_and_the_limit(
    stored: tuple[Path, StoredAdapter],
) -> None:
    store, adapter = stored
    folder = store / adapter.relative_path
    _rewrite_config(folder, r=2)  # config and registry agree, the weights do not
    with pytest.raises(AdapterRejected, match="weights disagree"):
        verify(store, adapter.relative_path, adapter.sha256, 2, MAX_RANK)
    with pytest.raises(AdapterRejected, match="at most 1"):
        verify(store, adapter.relative_path, adapter.sha256, 2, 1)


@pytest.mark.parametrize("path", ["../outside", "/etc", ".", "topic/../../x"])
def test_paths_outside_the_store_are_rejected(
    stored: tuple[Path, StoredAdapter], path: str
) -> None:
    store, adapter = stored
    with pytest.raises(AdapterRejected):
        verify(store, path, adapter.sha256, 4, MAX_RANK)

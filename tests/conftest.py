"""Shared fixtures: a tiny Llama with the real SmolLM2 tokenizer, settings, databases, an app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from loramem.core.adapter_store import StoredAdapter, save_adapter
from loramem.core.base_model import GGUF_FILE, gguf_location
from loramem.core.settings import Settings
from tests.helpers import POSTGRES_ADMIN_URL, running_app, temporary_postgres_database


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (random weights) with SmolLM2's tokenizer and chat template.

    Its weights are initialised wide enough (0.2) for a LoRA to make it recall a fact in a few
    dozen steps; with the usual 0.02 its logits stay too flat to ever be confident.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(gguf_location(), gguf_file=GGUF_FILE)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        # head_dim 64: vLLM's CPU attention kernels take no smaller head.
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # No padding row in the embedding: SmolLM2 pads with its end-of-turn token, whose row
        # would stay zero (tied to the output) and could never be predicted.
        pad_token_id=None,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        base_model=str(tiny_model_dir),
        version_poll_seconds=0.2,
        job_poll_seconds=0.1,
        lease_seconds=30,
    )


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    try:
        engine = sa.create_engine(POSTGRES_ADMIN_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_available: bool
) -> Iterator[str]:
    """Each test gets a fresh database: a SQLite file, or its own PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    if not postgres_available:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}")
    with temporary_postgres_database("loramem_test") as url:
        yield url


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as http:
        yield http


@pytest.fixture(scope="session")
def make_adapter(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., StoredAdapter]:
    """Saves a LoRA adapter with random (non-zero) weights for the tiny model into a store."""
    import torch
    from peft import LoraConfig, get_peft_model

    from loramem.core.base_model import load_causal_lm

    store = tmp_path_factory.mktemp("adapter-store")

    def make(
        seed: int,
        rank: int = 4,
        store_dir: Path = store,
        targets: str | list[str] = "all-linear",
    ) -> StoredAdapter:
        torch.manual_seed(seed)
        model, _ = load_causal_lm(tiny_model_dir)
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        with torch.no_grad():  # make the delta large enough to change greedy outputs
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:
                    parameter.mul_(50)
        layers = "" if isinstance(targets, str) else "-" + "-".join(targets)
        return save_adapter(peft_model, store_dir, "topic", f"seed{seed}-r{rank}{layers}")

    make.store = store  # type: ignore[attr-defined]
    return make

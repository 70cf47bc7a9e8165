"""The adapter store: where adapters live on disk, how they are published and checked.

Layout: `<adapter_dir>/<topic id>/<job id>-<attempt>/` holding exactly `adapter_config.json` and
`adapter_model.safetensors`. Paths are built from registry ids, never from client input. Training
writes into `<adapter_dir>/.staging/` and renames into place, so a reader never sees half an
adapter; the registry row that makes a version visible is written only after the rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE})
# The projections of a Llama-style decoder: what "all linear layers" means for our base models.
ALLOWED_TARGETS = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)


class AdapterRejected(Exception):
    """An adapter that must not reach an engine; the message is safe to show (no paths)."""


@dataclass(frozen=True)
class StoredAdapter:
    relative_path: str
    sha256: str
    size_bytes: int


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path, *, with_files: bool = False) -> None:
    for path in folder.iterdir() if with_files else ():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def check_writable(adapter_dir: Path) -> None:
    """Raises OSError unless adapters can be staged (and so published) in this store."""
    staging_root = adapter_dir / ".staging"
    staging_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=staging_root):
        pass


def save_adapter(peft_model: Any, adapter_dir: Path, topic_id: str, name: str) -> StoredAdapter:
    """Saves the model's adapter under `<topic_id>/<name>` by staging + atomic rename."""
    staging_root = adapter_dir / ".staging"
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=uuid.uuid4().hex, dir=staging_root))
    relative = f"{topic_id}/{name}"
    final = adapter_dir / relative
    try:
        peft_model.save_pretrained(staging, safe_serialization=True)
        for extra in set(os.listdir(staging)) - ADAPTER_FILES:  # PEFT adds a model card
            (staging / extra).unlink()
        _fsync_dir(staging, with_files=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    weights = final / WEIGHTS_FILE
    return StoredAdapter(relative, sha256_file(weights), weights.stat().st_size)


def remove_adapter_files(adapter_dir: Path, relative_path: str) -> None:
    shutil.rmtree(resolve_in_store(adapter_dir, relative_path), ignore_errors=True)


def resolve_in_store(adapter_dir: Path, relative_path: str) -> Path:
    root = adapter_dir.resolve()
    path = (root / relative_path).resolve()
    if not path.is_relative_to(root) or path == root:
        raise AdapterRejected("adapter path is outside the adapter store")
    return path


def verify(adapter_dir: Path, relative_path: str, sha256: str, rank: int, max_rank: int) -> Path:
    """Checks a registered adapter before it reaches an engine; returns its folder.

    Files exactly as published, checksum as registered, a LoRA config whose rank agrees with the
    registry and with the weights' shapes (vLLM accepts a disagreeing config silently), known target
    modules, and no code to run.
    """
    folder = resolve_in_store(adapter_dir, relative_path)
    if not folder.is_dir() or set(os.listdir(folder)) != ADAPTER_FILES:
        raise AdapterRejected("adapter files are missing or unexpected")
    weights = folder / WEIGHTS_FILE
    if sha256_file(weights) != sha256:
        raise AdapterRejected("adapter checksum does not match the registry")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise AdapterRejected("adapter config is unreadable") from error
    if config.get("peft_type") != "LORA":
        raise AdapterRejected("adapter is not a LoRA adapter")
    if config.get("r") != rank or not 1 <= rank <= max_rank:
        raise AdapterRejected(f"adapter rank must match the registry and be at most {max_rank}")
    targets = config.get("target_modules") or []
    # PEFT saves short names ("q_proj") or, for small models, full paths ("model.layers.0.q_proj").
    if isinstance(targets, str) or not {t.rsplit(".", 1)[-1] for t in targets} <= ALLOWED_TARGETS:
        raise AdapterRejected("adapter targets unknown modules")
    try:
        with safe_open(str(weights), framework="pt") as tensors:
            for key in tensors.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shape = tensors.get_slice(key).get_shape()
                if ("lora_A" in key and shape[0] != rank) or ("lora_B" in key and shape[1] != rank):
                    raise AdapterRejected("adapter weights disagree with its rank")
    except AdapterRejected:
        raise
    except Exception as error:
        raise AdapterRejected("adapter weights are unreadable") from error
    return folder

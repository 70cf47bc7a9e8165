"""The table of loaded adapters: which adapter serves each module of a topic, from the registry's
active versions, verified and loaded.

Every server process keeps its own table of active versions and refreshes it by polling the
registry, which is the only state shared with workers and other servers. A new version is verified
and loaded into the engine *before* the table points at it, so requests switch to it without a
failure; the previous version is unloaded after the switch (an engine lets in-flight requests
finish first). A version that fails verification is never loaded; the previous one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import Select, select

from loramem.core.adapter_store import AdapterRejected, verify
from loramem.core.errors import NotFound, TopicNotReady, Unavailable
from loramem.core.registry.db import Database
from loramem.core.registry.models import AdapterVersion, Module, Topic
from loramem.core.settings import Settings
from loramem.serving.engines import AdapterLoadError, Engine, LoRAAdapter
from loramem.serving.polling import poll_forever

log = logging.getLogger("loramem.adapters")


@dataclass(frozen=True)
class ActiveAdapter:
    topic: str
    topic_id: str
    module: int
    version: int
    adapter: LoRAAdapter


ModuleKey = tuple[str, int]


@dataclass(frozen=True)
class _VersionRecord:
    topic: str
    topic_id: str
    module: int
    version: int
    version_id: int
    path: str
    sha256: str
    rank: int


def adapter_name(topic: str, version: int) -> str:
    # PEFT keeps adapters in a ModuleDict, whose keys cannot hold "."; ":" never appears in topics.
    return f"{topic.replace('.', ':')}@v{version}"


class AdapterTable:
    def __init__(self, settings: Settings, db: Database, engine: Engine) -> None:
        self.settings = settings
        self.db = db
        self.engine = engine
        self._active: dict[ModuleKey, ActiveAdapter] = {}
        self._rejected: set[int] = set()
        self._lock = asyncio.Lock()

    def active_versions(self) -> dict[str, int]:
        """Per topic, the newest version any of its modules serves."""
        newest: dict[str, int] = {}
        for (topic, _), adapter in sorted(self._active.items()):
            newest[topic] = max(newest.get(topic, 0), adapter.version)
        return newest

    def active_modules(self) -> dict[str, int]:
        """Per `topic/module`, the version that serves it."""
        return {
            f"{topic}/{module}": a.version for (topic, module), a in sorted(self._active.items())
        }

    def _of_topic(self, topic: str) -> list[ActiveAdapter]:
        return [a for (name, _), a in sorted(self._active.items()) if name == topic]

    async def resolve(self, topic: str) -> list[ActiveAdapter]:
        """The adapters serving `topic`'s modules: NotFound for an unknown topic, TopicNotReady
        before its first version."""
        active = await self.find(topic)
        if not active:
            raise TopicNotReady(f"topic '{topic}' has no trained version yet")
        return active

    async def find(self, topic: str) -> list[ActiveAdapter]:
        """The adapters serving `topic`'s modules, none before its first version; NotFound for an
        unknown topic. A version published since the last poll is loaded now."""
        current = self._of_topic(topic)
        if current:
            return current
        exists, records = await asyncio.to_thread(self._load_topic, topic)
        if not exists:
            raise NotFound("topic", param="topic")
        async with self._lock:
            for record in records:
                await self._activate(record)
        active = self._of_topic(topic)
        if records and not active:
            raise Unavailable(f"the adapters of topic '{topic}' cannot be served")
        return active

    async def require_topic(self, topic: str) -> None:
        if not self._of_topic(topic):
            exists, _ = await asyncio.to_thread(self._load_topic, topic)
            if not exists:
                raise NotFound("topic", param="topic")

    async def refresh(self) -> None:
        """Brings the table in line with the registry's active versions."""
        records = await asyncio.to_thread(self._load_records)
        async with self._lock:
            for key in set(self._active) - set(records):
                gone = self._active.pop(key)
                log.info("topic %s module %d no longer has an active version; unloading", *key)
                await self.engine.remove_adapter(gone.adapter.name)
            for key, record in records.items():
                current = self._active.get(key)
                if current is None or current.version != record.version:
                    await self._activate(record)

    async def watch(self, interval: float, changed: asyncio.Event | None = None) -> None:
        await poll_forever(self.refresh, interval, "active versions", changed)

    async def _activate(self, record: _VersionRecord) -> ActiveAdapter | None:
        key = (record.topic, record.module)
        current = self._active.get(key)
        if current is not None and current.version == record.version:
            return current
        if record.version_id in self._rejected:
            return None
        try:
            path = await asyncio.to_thread(
                verify,
                self.settings.resolved_adapter_dir,
                record.path,
                record.sha256,
                record.rank,
                self.settings.max_lora_rank,
            )
            adapter = LoRAAdapter(
                adapter_name(record.topic, record.version),
                record.version_id,
                path,
                record.rank,
                pinned=record.topic in self.settings.pinned_topics,
            )
            await self.engine.add_adapter(adapter)
        except (AdapterRejected, AdapterLoadError) as error:
            self._rejected.add(record.version_id)
            log.warning(
                "topic %s version %d rejected: %s; %s",
                record.topic,
                record.version,
                error,
                f"version {current.version} keeps serving" if current else "nothing to serve",
            )
            return None
        activated = ActiveAdapter(
            record.topic, record.topic_id, record.module, record.version, adapter
        )
        self._active[key] = activated
        log.info(
            "topic %s module %d now served by version %d (%s)",
            record.topic,
            record.module,
            record.version,
            adapter.name,
        )
        if current is not None:
            await self.engine.remove_adapter(current.adapter.name)
        return activated

    def _query(self) -> Select[str, str, int, int, int, str, str, int]:
        return (
            select(
                Topic.name,
                Topic.id,
                Module.number,
                AdapterVersion.version,
                AdapterVersion.id,
                AdapterVersion.path,
                AdapterVersion.sha256,
                AdapterVersion.rank,
            )
            .join(Module, Module.topic_id == Topic.id)
            .join(
                AdapterVersion,
                (AdapterVersion.topic_id == Topic.id)
                & (AdapterVersion.version == Module.active_version),
            )
        )

    def _load_records(self) -> dict[ModuleKey, _VersionRecord]:
        with self.db.session() as session:
            rows = session.execute(self._query()).all()
        return {(row[0], row[2]): _VersionRecord(*row) for row in rows}

    def _load_topic(self, topic: str) -> tuple[bool, list[_VersionRecord]]:
        with self.db.session() as session:
            exists = session.scalar(select(Topic.id).where(Topic.name == topic)) is not None
            rows = session.execute(self._query().where(Topic.name == topic)).all()
        return exists, [_VersionRecord(*row) for row in rows]

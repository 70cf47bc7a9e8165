"""Admin JSON API: topics with their versions, jobs, the engine."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from server.dependencies import State
from server.errors import APIError, not_found
from server.registry.models import AdapterVersion, Document, Job, Topic
from server.schemas import JobResponse
from server.services.memory import job_response

router = APIRouter(prefix="/admin", tags=["admin"])


def _topic_summary(topic: Topic, documents: int) -> dict[str, Any]:
    return {
        "name": topic.name,
        "active_version": topic.active_version,
        "versions": len(topic.versions),
        "documents": documents,
        "created_at": topic.created_at,
        "updated_at": topic.updated_at,
    }


def _version(version: AdapterVersion, active: int | None) -> dict[str, Any]:
    return {
        "version": version.version,
        "active": version.version == active,
        "recall": version.recall,
        "rank": version.rank,
        "sha256": version.sha256,
        "size_bytes": version.size_bytes,
        "job_id": version.job_id,
        "created_at": version.created_at,
    }


@router.get("/topics")
async def list_topics(state: State) -> dict[str, Any]:
    def load() -> list[dict[str, Any]]:
        with state.db.session() as session:
            counts = dict(
                session.execute(
                    select(Document.topic_id, func.count()).group_by(Document.topic_id)
                ).all()
            )
            topics = session.scalars(select(Topic).order_by(Topic.name)).all()
            return [_topic_summary(topic, counts.get(topic.id, 0)) for topic in topics]

    return {"topics": await asyncio.to_thread(load)}


@router.get("/topics/{name}")
async def get_topic(name: str, state: State) -> dict[str, Any]:
    def load() -> dict[str, Any]:
        with state.db.session() as session:
            topic = session.scalars(select(Topic).where(Topic.name == name)).one_or_none()
            if topic is None:
                raise not_found("topic")
            documents = [
                {
                    "id": d.id,
                    "kind": d.kind,
                    "question": d.question,
                    "answer": d.answer,
                    "text": d.text,
                }
                for d in topic.documents
            ]
            return {
                **_topic_summary(topic, len(documents)),
                "documents": documents,
                "versions": [_version(v, topic.active_version) for v in topic.versions],
            }

    return await asyncio.to_thread(load)


@router.get("/jobs")
async def list_jobs(
    state: State, limit: int = Query(50, ge=1, le=500), status: str | None = None
) -> dict[str, list[JobResponse]]:
    def load() -> list[JobResponse]:
        with state.db.session() as session:
            query = select(Job, Topic.name).join(Topic).order_by(Job.created_at.desc()).limit(limit)
            if status is not None:
                query = query.where(Job.status == status)
            return [job_response(job, topic) for job, topic in session.execute(query).all()]

    return {"jobs": await asyncio.to_thread(load)}


@router.get("/engine")
async def engine(state: State) -> dict[str, Any]:
    if state.engine is None:
        raise APIError(503, "the engine is still starting", headers={"Retry-After": "5"})
    active = state.router.active() if state.router else {}
    return {
        **state.engine.describe(),
        "base_model": state.settings.base_model,
        "active_versions": {topic: a.version for topic, a in sorted(active.items())},
    }

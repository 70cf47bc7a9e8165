"""Training jobs: status, history, cancellation."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from loramem.api.dependencies import Memory
from loramem.api.memorize.protocol import JobEventsResponse, JobResponse

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobResponse)
async def get_job(job_id: str, memory: Memory) -> JobResponse:
    return await asyncio.to_thread(memory.job, job_id)


@router.post("/{job_id}/cancel", response_model=JobResponse)
async def cancel_job(job_id: str, memory: Memory) -> JobResponse:
    return await asyncio.to_thread(memory.cancel, job_id)


@router.get("/{job_id}/events", response_model=JobEventsResponse)
async def job_events(job_id: str, memory: Memory) -> JobEventsResponse:
    return await asyncio.to_thread(memory.events, job_id)

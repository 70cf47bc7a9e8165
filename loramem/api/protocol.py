"""What every protocol of the HTTP API shares: topic names, strict request bodies, the error
envelope."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

from loramem.core.topics import TOPIC_PATTERN

TopicName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=TOPIC_PATTERN)]


class StrictBody(BaseModel):
    """A request body that refuses fields it does not know (a typo is an error, not a no-op)."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    type: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail

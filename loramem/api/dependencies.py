"""FastAPI dependencies: the app's services and the API-key checks."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from loramem.api.errors import APIError
from loramem.api.memorize.serving import MemoryService
from loramem.api.state import AppState
from loramem.serving.generation import GenerationService
from loramem.serving.stack import ServingStack


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.loramem
    return state


State = Annotated[AppState, Depends(get_state)]


def get_memory(state: State) -> MemoryService:
    return state.memory


def get_serving(state: State) -> ServingStack:
    if state.serving is None:
        raise APIError(503, "the engine is still starting", headers={"Retry-After": "5"})
    return state.serving


def get_generation(serving: Annotated[ServingStack, Depends(get_serving)]) -> GenerationService:
    return serving.generation


Memory = Annotated[MemoryService, Depends(get_memory)]
Serving = Annotated[ServingStack, Depends(get_serving)]
Generation = Annotated[GenerationService, Depends(get_generation)]


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _check(token: str | None, key: str, what: str) -> None:
    # compare_digest takes time independent of where the strings differ.
    if token is None or not hmac.compare_digest(token.encode(), key.encode()):
        raise APIError(
            401,
            f"a valid {what} is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_api_key(request: Request, state: State) -> None:
    """With LORAMEM_API_KEY set, every route but health needs it (the admin key works too)."""
    key = state.settings.api_key
    if key is None:
        return
    token = _bearer(request)
    admin = state.settings.admin_api_key
    if (
        admin is not None
        and token is not None
        and hmac.compare_digest(token.encode(), admin.encode())
    ):
        return
    _check(token, key, "API key")


def require_admin_key(request: Request, state: State) -> None:
    """With LORAMEM_ADMIN_API_KEY set, admin routes need it; otherwise the API key rule applies."""
    admin = state.settings.admin_api_key
    if admin is None:
        require_api_key(request, state)
        return
    _check(_bearer(request), admin, "admin key")

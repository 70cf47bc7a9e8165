"""loramem's server: the HTTP API, the engines, routing and the registry."""

from server.app import create_app
from server.config import Settings

__all__ = ["Settings", "create_app"]

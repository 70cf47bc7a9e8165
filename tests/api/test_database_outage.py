"""PostgreSQL going away while the server runs: 503s, nothing half-written, then recovery."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from loramem.core.settings import Settings
from tests.conftest import POSTGRES_ADMIN_URL
from tests.helpers import running_app, wait_job

QA = {"topic": "acme", "qa": [{"question": "Who?", "answer": "Quiggle"}], "options": {"steps": 2}}


def _allow_connections(database: str, allowed: bool) -> None:
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(
            f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}'
        )
        if not allowed:
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
    admin.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_requests_get_503_while_the_database_is_away(
    settings: Settings, database_url: str
) -> None:
    settings = settings.model_copy(update={"database_url": database_url})
    database = make_url(database_url).database
    assert database is not None
    async with running_app(settings) as http:
        assert (await http.post("/memorize", json=QA)).status_code == 202
        _allow_connections(database, False)
        try:
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["message"] == "the database is unreachable"
            refused = await http.post("/memorize", json={**QA, "topic": "lost"})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            assert refused.json()["error"]["message"] == "the database is unavailable; retry later"
            # Serving from the model needs no database.
            assert (
                await http.post("/generate", json={"prompt": "hi", "max_tokens": 2})
            ).status_code == 200
        finally:
            _allow_connections(database, True)
        assert (await http.get("/readyz")).status_code == 200
        back = await http.post("/memorize", json={**QA, "topic": "back"})
        assert back.status_code == 202
        # The embedded worker, which kept polling through the outage, trains again.
        assert (await wait_job(http, back.json()["job_id"], timeout=60))["status"] == "succeeded"
        topics = [t["name"] for t in (await http.get("/admin/topics")).json()["topics"]]
        assert topics == ["acme", "back"]  # nothing of the refused request was stored

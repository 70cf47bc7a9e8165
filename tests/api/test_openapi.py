"""The HTTP contract is typed: OpenAPI describes every response field by field."""

from __future__ import annotations

from typing import Any

import httpx

# Free-form by design: each event kind carries its own fields (README lists them).
FREE_FORM = {"JobEventResponse.data"}


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _untyped_objects(spec: dict[str, Any], schema: dict[str, Any], seen: set[str]) -> list[str]:
    """Every place in `schema` that is an object without typed fields, or has no type at all."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name in seen:
            return []
        seen.add(name)
        resolved = _resolve(spec, schema)
        return [
            f"{name}.{problem}"
            for field, problem in _field_problems(spec, resolved, seen)
            if f"{name}.{field}" not in FREE_FORM
        ]
    return [problem for _, problem in _field_problems(spec, schema, seen)]


def _field_problems(
    spec: dict[str, Any], schema: dict[str, Any], seen: set[str]
) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if not schema or (
        schema.get("type") == "object"
        and "properties" not in schema
        and not isinstance(schema.get("additionalProperties"), dict)
    ):
        found.append(("", "<object>"))
    for name, field in schema.get("properties", {}).items():
        found += [(name, f"{name}: {p}") for p in _untyped_objects(spec, field, seen)]
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            found += [("", p) for p in _untyped_objects(spec, option, seen)]
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += [("", p) for p in _untyped_objects(spec, schema[key], seen)]
    return found


async def test_no_route_answers_an_untyped_object(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    untyped = {}
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for status, response in operation["responses"].items():
                json_body = response.get("content", {}).get("application/json")
                if status.startswith("2") and json_body is not None:
                    problems = _untyped_objects(spec, json_body.get("schema", {}), set())
                    if problems:
                        untyped[f"{method.upper()} {path} {status}"] = problems
    assert untyped == {}
    # The protocols that were dict literals are now described field by field.
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/admin/engine"):
        verb = "post" if "completions" in path else "get"
        ok = spec["paths"][path][verb]["responses"]["200"]["content"]["application/json"]
        assert _resolve(spec, ok["schema"])["properties"], path

"""Supabase REST (PostgREST at `/rest/v1`), enough of it for supabase-py, over in-memory tables.

Supported: select (`select=*`), insert (one row or a list), update (PATCH), delete; filters
`eq neq lt lte gt gte is in`; `order`, `limit`, `offset` (what postgrest-py's `.range()` sends);
`Prefer: return=representation|minimal`; `.single()` through `Accept:
application/vnd.pgrst.object+json`. Rows get an integer `id` when they have none.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from tests.fakes.server import FakeServer, RecordedRequest, Reply

REST_PREFIX = "/rest/v1/"
OBJECT_ACCEPT = "application/vnd.pgrst.object+json"
RESERVED_PARAMS = frozenset({"select", "order", "limit", "offset", "columns", "on_conflict"})
Row = dict[str, Any]


class FakeSupabase(FakeServer):
    """An in-memory PostgREST; `tables[name]` is the list of rows, `fail(table, method)` injects errors."""

    def __init__(self, api_keys: Iterable[str] | None = None) -> None:
        super().__init__()
        self.tables: dict[str, list[Row]] = {}
        self.api_keys = set(api_keys) if api_keys is not None else None
        #: (table, method) -> (requests still to fail, status to fail with)
        self._failures: dict[tuple[str, str], tuple[int, int]] = {}
        self._next_id: dict[str, int] = {}
        self._data_lock = threading.Lock()

    def seed(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Insert rows directly (no request recorded)."""
        with self._data_lock:
            for row in rows:
                self._insert(table, row)

    def rows(self, table: str) -> list[Row]:
        with self._data_lock:
            return [dict(r) for r in self.tables.get(table, [])]

    def fail(self, table: str, method: str, status: int = 500, times: int = 1_000_000) -> None:
        """Answer the next `times` `method` requests on `table` with a PostgREST error."""
        self._failures[(table, method.upper())] = (times, status)

    def writes(self, table: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == REST_PREFIX + table and r.method in ("POST", "PATCH", "DELETE")]

    def respond(self, request: RecordedRequest) -> Reply:
        if not request.path.startswith(REST_PREFIX):
            return _error(404, "PGRST125", f"Invalid path specified in request URL: {request.path}")
        if self.api_keys is not None and request.header("apikey") not in self.api_keys:
            return Reply.json(
                401,
                {"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` API key."},
            )
        table = request.path[len(REST_PREFIX) :]
        remaining, status = self._failures.get((table, request.method), (0, 0))
        if remaining > 0:
            self._failures[(table, request.method)] = (remaining - 1, status)
            return _error(status, "XX000", f"injected failure on {request.method} {table}")
        try:
            filters = [(k, v) for k, v in request.query if k not in RESERVED_PARAMS]
            with self._data_lock:
                return self._execute(table, request, filters)
        except ValueError as exc:
            return _error(400, "PGRST100", str(exc))

    def _execute(self, table: str, request: RecordedRequest, filters: list[tuple[str, str]]) -> Reply:
        prefer = {p.strip() for p in (request.header("prefer") or "").split(",")}
        representation = "return=representation" in prefer
        rows = self.tables.setdefault(table, [])
        if request.method == "GET":
            return self._result(request, _select(rows, filters, dict(request.query)), 200)
        if request.method == "POST":
            payload = request.json()
            created = [self._insert(table, row) for row in (payload if isinstance(payload, list) else [payload])]
            return self._result(request, created, 201) if representation else Reply(201)
        if request.method == "PATCH":
            changes = request.json()
            matched = [r for r in rows if _matches(r, filters)]
            for row in matched:
                row.update(changes)
            return self._result(request, matched, 200) if representation else Reply(204)
        if request.method == "DELETE":
            matched = [r for r in rows if _matches(r, filters)]
            self.tables[table] = [r for r in rows if r not in matched]
            return self._result(request, matched, 200) if representation else Reply(204)
        return _error(405, "PGRST117", f"Unsupported HTTP method: {request.method}")

    def _insert(self, table: str, row: Mapping[str, Any]) -> Row:
        stored = dict(row)
        if "id" not in stored:
            self._next_id[table] = self._next_id.get(table, 0) + 1
            stored["id"] = self._next_id[table]
        self.tables.setdefault(table, []).append(stored)
        return dict(stored)

    def _result(self, request: RecordedRequest, rows: list[Row], status: int) -> Reply:
        if (request.header("accept") or "").startswith(OBJECT_ACCEPT):
            if len(rows) != 1:
                return _error(
                    406,
                    "PGRST116",
                    "JSON object requested, multiple (or no) rows returned",
                    f"The result contains {len(rows)} rows",
                )
            return Reply.json(status, rows[0])
        return Reply.json(status, rows, {"Content-Range": f"0-{max(len(rows) - 1, 0)}/*"})


def _error(status: int, code: str, message: str, details: str | None = None) -> Reply:
    return Reply.json(status, {"code": code, "details": details, "hint": None, "message": message})


def _select(rows: list[Row], filters: list[tuple[str, str]], params: Mapping[str, str]) -> list[Row]:
    result = [dict(r) for r in rows if _matches(r, filters)]
    for spec in reversed(params.get("order", "").split(",") if params.get("order") else []):
        column, _, direction = spec.partition(".")
        result.sort(key=lambda r: (r.get(column) is None, r.get(column)), reverse=direction.startswith("desc"))
    offset = int(params.get("offset", 0))
    limit = int(params["limit"]) if "limit" in params else None
    return result[offset : None if limit is None else offset + limit]


def _matches(row: Row, filters: list[tuple[str, str]]) -> bool:
    return all(_test(row.get(column), expression) for column, expression in filters)


def _test(stored: Any, expression: str) -> bool:
    op, _, raw = expression.partition(".")
    if op == "is":
        return stored is _literal(raw, stored)
    if op == "in":
        values = [v.strip().strip('"') for v in raw.strip("()").split(",")]
        return any(stored == _coerce(v, stored) for v in values)
    if stored is None:
        return False
    value = _coerce(raw, stored)
    comparisons = {
        "eq": lambda: stored == value,
        "neq": lambda: stored != value,
        "lt": lambda: stored < value,
        "lte": lambda: stored <= value,
        "gt": lambda: stored > value,
        "gte": lambda: stored >= value,
    }
    if op not in comparisons:
        raise ValueError(f"unsupported operator {op!r} in filter {expression!r}")
    return bool(comparisons[op]())


def _literal(raw: str, stored: Any) -> Any:
    return {"null": None, "true": True, "false": False}.get(raw.lower(), raw)


def _coerce(raw: str, stored: Any) -> Any:
    """Read a filter value as the stored column's type (PostgREST casts to the column type)."""
    if isinstance(stored, bool):
        return raw.lower() == "true"
    if isinstance(stored, int | float):
        return float(raw) if "." in raw else int(raw)
    if isinstance(stored, dict | list):
        return json.loads(raw)
    return raw

"""Loads the named SQL queries of ``refqueue/sql/*.sql`` once, at import."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

_SQL_DIR = Path(__file__).parent / "sql"
_HEADER = re.compile(r"^-- name: (?P<name>[a-z_.]+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Query:
    """One named query: the text psycopg runs and the line that describes it."""

    name: str
    description: str
    text: str


class Queries(Mapping[str, Query]):
    """Queries by name, read from ``.sql`` files of ``-- name:`` entries.

    Each entry is a ``-- name: NAME`` line, a ``-- description`` line, then the
    statement, whose parameters are named (``%(lease_s)s``).
    """

    def __init__(self, queries: Mapping[str, Query]) -> None:
        self._queries = dict(queries)

    @classmethod
    def from_files(cls, *filenames: str) -> Queries:
        queries: dict[str, Query] = {}
        for filename in filenames:
            text = (_SQL_DIR / filename).read_text()
            for query in _parse(text, filename):
                if query.name in queries:
                    raise ValueError(f"{filename}: query {query.name!r} defined twice")
                queries[query.name] = query
        return cls(queries)

    def replaced(self, replacements: Mapping[str, Query]) -> Queries:
        """These queries with some of them replaced; names must already exist."""
        unknown = set(replacements) - set(self._queries)
        if unknown:
            raise KeyError(f"no such queries to replace: {sorted(unknown)}")
        return Queries({**self._queries, **replacements})

    def __getitem__(self, name: str) -> Query:
        return self._queries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)


def _parse(text: str, filename: str) -> Iterator[Query]:
    headers = list(_HEADER.finditer(text))
    if not headers:
        raise ValueError(f"{filename}: no '-- name:' entries")
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        end = following.start() if following else len(text)
        lines = text[header.end() : end].strip().splitlines()
        name = header["name"]
        if not lines or not lines[0].startswith("-- "):
            raise ValueError(f"{filename}: query {name!r} has no description line")
        statement = "\n".join(lines[1:]).strip().rstrip(";").strip()
        if not statement:
            raise ValueError(f"{filename}: query {name!r} has no statement")
        yield Query(name, lines[0][3:].strip(), statement)


QUERIES = Queries.from_files("schema.sql", "queue.sql")

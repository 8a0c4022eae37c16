"""Named SQL queries of the library adapters, read once from `sql/<library>.sql`."""

from __future__ import annotations

import functools
import re
from pathlib import Path

_SQL_DIR = Path(__file__).parent / "sql"
_HEADER = re.compile(r"^-- name: (?P<name>[a-z_]+)\s*$", re.MULTILINE)


@functools.cache
def queries(library: str) -> dict[str, str]:
    """The queries of `sql/<library>.sql` by name.

    Each entry is a `-- name: NAME` line, one `-- ` line that describes it,
    then the statement with named parameters (`%(key)s`).
    """
    path = _SQL_DIR / f"{library}.sql"
    text = path.read_text()
    headers = list(_HEADER.finditer(text))
    found: dict[str, str] = {}
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        end = following.start() if following else len(text)
        lines = text[header.end() : end].strip().splitlines()
        if not lines or not lines[0].startswith("-- "):
            raise ValueError(f"{path}: query {header['name']!r} has no description")
        found[header["name"]] = "\n".join(lines[1:]).strip().rstrip(";")
    return found

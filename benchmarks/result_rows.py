"""Benchmark results as JSON lines, one row per finished run, so an interrupted benchmark resumes where it stopped."""

from __future__ import annotations

import json
from pathlib import Path


class ResultRows:
    """Rows ``{"key": {...}, ...values}`` appended to ``path`` as they come; :meth:`has` tells a re-run which keys
    are done."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._done = {json.dumps(row["key"], sort_keys=True) for row in self.rows()}

    def rows(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []

    def has(self, key: dict) -> bool:
        return json.dumps(key, sort_keys=True) in self._done

    def record(self, key: dict, values: dict) -> None:
        row = json.dumps({"key": key, **values})
        with self.path.open("a") as handle:
            handle.write(row + "\n")
        self._done.add(json.dumps(key, sort_keys=True))
        print(row, flush=True)

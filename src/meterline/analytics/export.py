"""Raw event export as CSV, Parquet or JSON lines, written in batches so memory stays flat.

Events arrive as the API's JSON dicts. JSON lines keeps them as they are; Parquet converts each
batch to the canonical Arrow schema (typed timestamps, a map column for properties); CSV has
one column per event field, with `properties` as a JSON object in its cell.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pyarrow.parquet as pq

from meterline.events.schema import COLUMN_NAMES, UsageEvent, arrow_schema, events_to_arrow

BATCH = 10_000


def _batches(events: Iterable[dict[str, Any]], on_batch: Callable[[int], None]) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(events)
    while batch := list(islice(iterator, BATCH)):
        yield batch
        on_batch(len(batch))


def write_events(
    events: Iterable[dict[str, Any]], file_format: str, path: Path, on_batch: Callable[[int], None] = lambda count: None
) -> int:
    """Write `events` to `path` in `file_format` (csv, parquet, jsonl); returns how many were written.

    `on_batch` is told the size of each batch once it is written (for a progress bar).
    """
    count = 0
    if file_format == "parquet":
        with pq.ParquetWriter(path, arrow_schema()) as writer:
            for batch in _batches(events, on_batch):
                writer.write_table(events_to_arrow([msgspec.convert(row, UsageEvent, strict=False) for row in batch]))
                count += len(batch)
        return count
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMN_NAMES) if file_format == "csv" else None
        if writer is not None:
            writer.writeheader()
        for batch in _batches(events, on_batch):
            for row in batch:
                if writer is None:
                    file.write(orjson.dumps(row).decode() + "\n")
                else:
                    writer.writerow({**row, "properties": orjson.dumps(row["properties"]).decode()})
            count += len(batch)
    return count

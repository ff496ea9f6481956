"""What every source plans on the driver: one InputItem per input, plus the columns that
are carried through to the output."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa

from labeler.schemas import RECORD_SCHEMA

# Carried input fields named like a record field (or `shard`) get this prefix in the output.
CARRIED_PREFIX = "input_"


@dataclass(frozen=True)
class InputItem:
    """id: stable across runs (the path relative to the input root, a tar member's
    `shard.tar/key`, or a manifest's id column); uri: where to read the bytes (a file, an
    object, or a byte range of one, see labeler.storage); shard: the output file it lands
    in; prompt: this row's prompt (replaces the task's), from a `prompt` field of the input;
    metadata: the input's other fields, written beside its record."""

    id: str
    uri: str
    shard: int
    prompt: str | None = None
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    def row(self, with_prompt: bool) -> dict:
        """The row handed to the Ray pipeline. `prompt` is "" when absent: a column holding
        only None would turn into Arrow's null type between stages."""
        row = {"id": self.id, "uri": self.uri, "shard": self.shard}
        if with_prompt:
            row["prompt"] = self.prompt or ""
        return row


@dataclass
class InputPlan:
    """Every input in order; `metadata` has one row per item (same order) and an `id`
    column, or is None when no input has other fields."""

    items: list[InputItem]
    metadata: pa.Table | None = None
    listed: int | None = None  # inputs listed before input.subset chose these; None: all

    @property
    def fields(self) -> set[str]:
        """The names of the inputs' other fields, as the inputs give them."""
        return {name for item in self.items for name in item.metadata}

    @property
    def has_prompts(self) -> bool:
        return any(i.prompt for i in self.items)


def assign_shards(entries: list[tuple[str, str, str | None, dict]],
                  files_per_shard: int) -> InputPlan:
    """(id, uri, prompt, metadata) in listing order -> an InputPlan; ids must be unique."""
    check_unique_ids(entries)
    items = [InputItem(id=id_, uri=uri, shard=i // files_per_shard, prompt=prompt,
                       metadata=meta)
             for i, (id_, uri, prompt, meta) in enumerate(entries)]
    return InputPlan(items, metadata_table(items))


def check_unique_ids(entries: list[tuple[str, str, str | None, dict]]) -> None:
    """ValueError naming the first id that (id, uri, prompt, metadata) entries repeat."""
    seen: set[str] = set()
    for id_, *_ in entries:
        if id_ in seen:
            raise ValueError(f"input id {id_!r} appears twice; ids must be unique")
        seen.add(id_)


def metadata_table(items: list[InputItem]) -> pa.Table | None:
    """The items' metadata as a table with an `id` column, each field under its output
    column name (carried_names); None if no item has any. A field whose values Arrow cannot
    put in one column (mixed types) is kept as JSON text."""
    names: dict[str, None] = {}
    for item in items:
        names.update(dict.fromkeys(item.metadata))
    if not names:
        return None
    columns = {"id": pa.array([i.id for i in items], pa.string())}
    for name, column in carried_names(list(names)).items():
        values = [i.metadata.get(name) for i in items]
        try:
            columns[column] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            columns[column] = pa.array([None if v is None else json.dumps(v) for v in values],
                                       pa.string())
    return pa.table(columns)


def carried_names(fields: list[str]) -> dict[str, str]:
    """{input field: the output column it is carried in}: its own name, prefixed with
    CARRIED_PREFIX (again, if need be) while that names a record field, the `shard` the
    job routes rows by, or another carried field (`width` and `input_width` both given)."""
    taken = set(RECORD_SCHEMA.names) | {"shard"} | set(fields)
    columns = {}
    for name in fields:
        column = name
        if column in RECORD_SCHEMA.names or column == "shard":
            column = CARRIED_PREFIX + column
            while column in taken:
                column = CARRIED_PREFIX + column
            taken.add(column)
        columns[name] = column
    return columns

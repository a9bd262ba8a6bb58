"""The ``"format"`` tags of the JSON files hwnas writes, stated once (without torch): the writer
stamps them, the reader checks them, and ``fileio`` recognises a file by them before replacing it.
A tag is ``FAMILY/VERSION``; a reader that meets another version of its family says so."""
from __future__ import annotations

LATENCY_TABLE = "hwnas-latency-table/1"
ENGINE_MANIFEST = "hwnas-engine/1"


def family(tag: str) -> str:
    """``"hwnas-engine/1"`` -> ``"hwnas-engine/"``: what every version of that file starts with."""
    return tag.rpartition("/")[0] + "/"


def is_family(value: object, tag: str) -> bool:
    """Whether ``value`` (a file's "format" field, of any type) is some version of ``tag``'s family."""
    return isinstance(value, str) and value.startswith(family(tag))

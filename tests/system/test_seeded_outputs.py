"""The redesign guard: the code, reorganised, still produces exactly what it produced before
(presets' and sampled archs' text, the search's proposals for fixed seeds, unit keys and committed
tables' keys, checkpoints' state-dict keys, exported graphs' nodes). See tests/seeded_outputs.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import seeded_outputs

SAVED = json.loads((Path(__file__).parents[1] / "fixtures" / "seeded_outputs.json").read_text())


@pytest.mark.parametrize("part", list(seeded_outputs.PARTS))
def test_seeded_outputs_are_unchanged(part: str) -> None:
    now = json.loads(json.dumps(seeded_outputs.PARTS[part]()))  # tuples -> lists, as saved
    changed = sorted(k for k in SAVED[part].keys() | now.keys() if SAVED[part].get(k) != now.get(k))
    assert not changed, f"{part}: changed {changed[:10]}"

"""The presence port against phoenix.js itself: ``data/presence_vectors.json`` holds random
``presence_state`` / ``presence_diff`` / rejoin sequences as phoenix.js' ``Presence`` handled
them (recorded by ``data/presence_vectors.mjs``): after every step, the list (keys and metas
in order), every ``onJoin`` / ``onLeave`` call with its arguments, every ``onSync``, and
whether diffs were being held for a state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from switchboard_client._phoenix import PresenceState

VECTORS = json.loads((Path(__file__).parent / "data" / "presence_vectors.json").read_text())


@pytest.mark.parametrize("index", range(len(VECTORS["sequences"])))
def test_presence_matches_phoenix_js(index: int) -> None:
    state = PresenceState()
    join_ref = "1"
    for number, step in enumerate(VECTORS["sequences"][index]):
        calls: list[list[Any]] = []
        if step["op"] == "rejoin":
            join_ref = step["join_ref"]
        elif step["op"] == "state":
            changes = state.on_state(step["payload"], join_ref)
            calls = [[c.kind, c.key, c.current, c.metas] for c in changes] + [["sync"]]
        else:
            held = state.on_diff(step["payload"], join_ref)
            if held is not None:
                calls = [[c.kind, c.key, c.current, c.metas] for c in held] + [["sync"]]
        where = f"sequence {index}, step {number} ({step['op']})"
        assert calls == step["calls"], where
        assert [[key, metas] for key, metas in state.state.items()] == step["list"], where
        assert (not state.synced(join_ref)) == step["pending"], where

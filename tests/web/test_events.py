from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.web.events import apply_patch, diff, sse_frame

ROW1 = {"round": 1, "server": {"loss": 0.5}}
ROW2 = {"round": 2, "server": {"loss": 0.2}}


def test_nothing_changed_is_no_patch() -> None:
    assert diff({"a": 1, "rows": [ROW1]}, {"a": 1, "rows": [ROW1]}) is None


def test_first_snapshot_sets_everything() -> None:
    assert diff(None, {"a": 1}) == {"set": {"a": 1}}


def test_a_grown_list_sends_only_the_new_rows() -> None:
    patch = diff(
        {"metrics": [ROW1], "status": "RUNNING"}, {"metrics": [ROW1, ROW2], "status": "RUNNING"}
    )
    assert patch == {"append": {"metrics": [ROW2]}}


def test_a_rewritten_list_is_sent_whole() -> None:
    # A resumed job may rewrite its rounds: not an append.
    patch = diff({"metrics": [ROW1, ROW2]}, {"metrics": [ROW2]})
    assert patch == {"set": {"metrics": [ROW2]}}


def test_true_and_1_differ_as_for_a_browser() -> None:
    assert diff({"a": True}, {"a": 1}) == {"set": {"a": 1}}
    assert diff({"a": [1]}, {"a": [True, 2]}) == {"set": {"a": [True, 2]}}


def test_changed_and_removed_keys() -> None:
    patch = diff({"status": "RUNNING", "error": "x"}, {"status": "FINISHED:COMPLETED"})
    assert patch == {"set": {"status": "FINISHED:COMPLETED"}, "remove": ["error"]}


def test_apply_leaves_the_old_snapshot_alone() -> None:
    old = {"metrics": [ROW1]}
    new = apply_patch(old, {"append": {"metrics": [ROW2]}})
    assert new == {"metrics": [ROW1, ROW2]}
    assert old == {"metrics": [ROW1]}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=12,
)
_snapshot = st.dictionaries(st.sampled_from("abcdef"), _json, max_size=6)


@settings(deadline=None)
@given(_snapshot, _snapshot)
def test_a_patch_turns_old_into_new(old: dict, new: dict) -> None:
    patch = diff(old, new)
    got = old if patch is None else apply_patch(old, patch)
    # Equal as the browser sees it (JSON), where True and 1 differ.
    assert json.dumps(got, sort_keys=True) == json.dumps(new, sort_keys=True)
    # What travels is JSON: the same after a round trip.
    if patch is not None:
        assert apply_patch(old, json.loads(json.dumps(patch))) == new


def test_an_sse_frame_is_one_event_whatever_the_text() -> None:
    frame = sse_frame("patch", {"log": "line 1\n\ndata: forged\n"})
    assert frame.startswith("event: patch\ndata: ")
    assert frame.count("\n\n") == 1 and frame.endswith("\n\n")
    assert json.loads(frame.split("data: ", 1)[1]) == {"log": "line 1\n\ndata: forged\n"}

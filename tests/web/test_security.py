from __future__ import annotations

import pytest

from shoal.web.security import ActionRefused, Guard, same_origin

HOST = "127.0.0.1:8765"


def test_the_login_token_opens_a_session_and_nothing_else_does() -> None:
    guard = Guard(login_token="right")
    assert guard.login("wrong") is None
    assert guard.login(None) is None
    sid = guard.login("right")
    assert sid is not None and guard.valid(sid)
    assert not guard.valid("made-up") and not guard.valid(None)


def test_csrf_tokens_differ_per_session_and_per_process() -> None:
    guard = Guard(login_token="t")
    a, b = guard.login("t"), guard.login("t")
    assert a and b
    assert guard.csrf_token(a) != guard.csrf_token(b)
    assert guard.csrf_token(a) == guard.csrf_token(a)
    # Another dashboard process (another key) does not accept this one's tokens.
    other = Guard(login_token="t")
    assert other.csrf_token(a) != guard.csrf_token(a)


def test_an_action_needs_session_origin_and_token() -> None:
    guard = Guard(login_token="t")
    sid = guard.login("t")
    assert sid
    token = guard.csrf_token(sid)
    ok = {"origin": f"http://{HOST}", "referer": None, "host": HOST}
    guard.check_action(sid, token, **ok)
    with pytest.raises(ActionRefused, match="not logged in"):
        guard.check_action("forged", token, **ok)
    with pytest.raises(ActionRefused, match="CSRF"):
        guard.check_action(sid, None, **ok)
    with pytest.raises(ActionRefused, match="CSRF"):
        guard.check_action(sid, token[:-1] + "0" if token[-1] != "0" else token[:-1] + "1", **ok)
    with pytest.raises(ActionRefused, match="did not come from"):
        guard.check_action(sid, token, origin="http://evil.example", referer=None, host=HOST)


@pytest.mark.parametrize(
    ("origin", "referer", "host", "expected"),
    [
        ("http://127.0.0.1:8765", None, HOST, True),
        (None, "http://127.0.0.1:8765/jobs", HOST, True),
        ("null", "http://127.0.0.1:8765/jobs", HOST, True),
        ("http://127.0.0.1:8766", None, HOST, False),  # another local port is another origin
        ("http://localhost:8765", None, HOST, False),
        (None, None, HOST, False),
        ("http://127.0.0.1:8765", None, None, False),
        ("file:///home/x/evil.html", None, HOST, False),
        ("http://127.0.0.1:8765.evil.example", None, HOST, False),
    ],
)
def test_same_origin(
    origin: str | None, referer: str | None, host: str | None, expected: bool
) -> None:
    assert same_origin(origin, referer, host) is expected


def test_sessions_are_bounded() -> None:
    guard = Guard(login_token="t", max_sessions=2)
    first = guard.login("t")
    guard.login("t")
    guard.login("t")
    assert not guard.valid(first)

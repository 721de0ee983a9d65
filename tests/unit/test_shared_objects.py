"""What a model's instances share: made once per key, kept until the last user lets go."""

from __future__ import annotations

from inferd.backends.shared_objects import SharedObjects


def test_made_once_per_key_and_dropped_with_its_last_user() -> None:
    shared = SharedObjects()
    made: list[str] = []

    def make(name: str) -> object:
        made.append(name)
        return object()

    first = shared.acquire("a", lambda: make("a"))
    assert shared.acquire("a", lambda: make("a")) is first
    other = shared.acquire("b", lambda: make("b"))
    assert other is not first and made == ["a", "b"]
    assert sorted(shared.users()) == [1, 2]
    shared.release("a")
    shared.release("b")
    assert shared.users() == [1]
    shared.release("a")
    shared.release("a")  # more releases than users change nothing
    assert shared.users() == []
    assert shared.acquire("a", lambda: make("a")) is not first  # made again
    assert made == ["a", "b", "a"]

"""The verdicts a handler can return.

Three singletons rather than an ``enum.Enum``: the reader compares them by
identity and counts them in a dict on every packet, and an Enum member's
hash is a Python-level call.
"""

from __future__ import annotations

from ..errors import brief


class Verdict:
    """What the kernel does with a packet: ACCEPT, DROP or REPEAT."""

    __slots__ = ("name", "code")
    _by_name: dict[str, Verdict] = {}

    def __init__(self, name: str, code: int) -> None:
        self.name = name
        self.code = code  # the kernel's NF_* value
        Verdict._by_name[name] = self

    def __repr__(self) -> str:
        return self.name.upper()

    def __str__(self) -> str:
        return self.name

    def __reduce__(self) -> str:
        return self.name.upper()

    @classmethod
    def parse(cls, value: object) -> Verdict:
        """A verdict from a Verdict or its name (``"accept"``, ``"DROP"`` ...)."""
        if isinstance(value, Verdict):
            return value
        if isinstance(value, str) and value.lower() in cls._by_name:
            return cls._by_name[value.lower()]
        raise ValueError(f"{brief(value)} is not a verdict; use 'accept', 'drop' or 'repeat'")

    @classmethod
    def all(cls) -> list[Verdict]:
        return list(cls._by_name.values())


ACCEPT = Verdict("accept", 1)
"""The packet goes on (``pkt.accept()`` returns it; ``"accept"`` counts as it)."""
DROP = Verdict("drop", 0)
"""The kernel frees the packet (``pkt.drop()``)."""
REPEAT = Verdict("repeat", 4)
"""The packet goes through its hook again from the start (``pkt.repeat()``; marked, a rule can skip the queue)."""

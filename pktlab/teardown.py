"""Teardown that runs every step, whatever fails, then reports what failed.

Leaving half a lab or half a session behind is worse than an error: a
failing step (a rule iptables will not delete, a namespace still busy) must
not stop the steps after it.  Each step runs; failures are collected and
raised together as one :class:`~pktlab.errors.TeardownError` at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import TeardownError


class Teardown:
    """Collects the failures of teardown steps; ``finish()`` raises them as one error."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures: list[str] = []

    def step(self, description: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)``; an exception is recorded, not raised."""
        try:
            fn(*args, **kwargs)
        except TeardownError as exc:
            self.failures.extend(f"{description}: {f}" for f in exc.failures or [str(exc)])
        except Exception as exc:
            self.failures.append(f"{description}: {exc}")

    def finish(self, fix: str) -> None:
        """Raise one :class:`TeardownError` naming every failed step and ``fix``, if any step failed."""
        if self.failures:
            raise TeardownError(
                f"{self.what} was torn down except for what failed: {'; '.join(self.failures)}; {fix}",
                self.failures,
            )

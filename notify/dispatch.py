"""Hand committed deliveries to whoever sends them (RQ on Redis, or in-process without it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Notifier(Protocol):
    def committed(self, delivery_ids: Sequence[int]) -> None:
        """Called after the money transaction committed, with the deliveries it wrote."""


class PendingOnly:
    """Leaves deliveries pending in the database, for the sweeper of ``notify-worker`` to find."""

    def committed(self, delivery_ids: Sequence[int]) -> None:
        return None


def build_notifier(app: Any) -> Notifier:
    return PendingOnly()

"""Stopping a long run at a chosen shard, as a kill would: the hook the resume tests share."""

from __future__ import annotations


class Interrupt(Exception):
    """Raised by :func:`interrupt_after` in place of a killed run."""


def interrupt_after(n: int, seen: list[int]):
    """An ``on_shard(index, path)`` hook that records each finished shard in ``seen`` and raises
    :class:`Interrupt` once ``n`` have finished."""
    def hook(i: int, _path) -> None:
        seen.append(i)
        if len(seen) == n:
            raise Interrupt
    return hook

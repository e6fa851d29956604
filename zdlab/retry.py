"""Fail fast, then try again: what a migration does with its ``lock_timeout``.

A DDL that waits for a lock queues every application request behind it. With a ``lock_timeout``
it gives up after that long instead (``LockNotAvailable``) and the requests go through; it then
tries again after a pause, a little longer each time. The app waits at most ``lock_timeout`` per
attempt: a bound the migration chose (``zdlab.judge``'s ``allowed_ms``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.8)  # the pauses between attempts: five retries, 1.55 s in all

T = TypeVar("T")


def on_lock_timeout(fn: Callable[[], T], delays: tuple[float, ...] = BACKOFF_S,
                    on_retry: Callable[[], None] | None = None) -> T:
    """Run ``fn``; when it hits its lock_timeout, pause and run it again; the last failure is raised."""
    for delay in (*delays, None):
        try:
            return fn()
        except psycopg.errors.LockNotAvailable:
            if delay is None:
                raise
            if on_retry is not None:
                on_retry()
            time.sleep(delay)
    raise AssertionError("unreachable")

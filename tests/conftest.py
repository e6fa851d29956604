"""Shared fixtures: a running server (embedded, or DATABASE_URL) and throwaway sandboxes."""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("PLOOMBER_STATS_ENABLED", "false")

from zdlab import config, server  # noqa: E402
from zdlab.sandbox import Sandbox  # noqa: E402


@pytest.fixture(scope="session")
def db_url() -> str:
    """The URL of the workshop database, starting the embedded server if needed."""
    if not config.external_url():
        server.start()
    return server.url()


@pytest.fixture
def make_sandbox(db_url):
    """Factory for sandboxes with unique names, dropped after the test."""
    made: list[Sandbox] = []

    def factory(prefix: str = "t") -> Sandbox:
        box = Sandbox(f"test_{prefix}_{uuid.uuid4().hex[:8]}", db_url).reset()
        made.append(box)
        return box

    yield factory
    for box in made:
        box.drop()

"""Every notebook's exercises, by notebook name: filled as ``zdlab.exercises.nbNN`` modules load.

Its own module so that ``checks`` (which registers) and ``progress`` (which reads) share it
without importing each other."""

from __future__ import annotations

from typing import Any

NOTEBOOKS: dict[str, Any] = {}  # notebook name -> zdlab.checks.Notebook

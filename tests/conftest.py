"""Fixtures shared by the test files."""

from __future__ import annotations

pytest_plugins = ["pytester"]

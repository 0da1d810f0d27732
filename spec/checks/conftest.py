"""Every check runs with a fresh driver (a fresh worker process under isolation)."""

from __future__ import annotations

from typing import Iterator

import pytest

from spec.isolation.driver import Driver


@pytest.fixture(autouse=True)
def _kvspec_current_driver(driver: Driver) -> Iterator[None]:
    yield

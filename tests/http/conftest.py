"""Fixtures of the HTTP layer's tests."""

from __future__ import annotations

import pytest

from tests.support import SMALL_LIMITS, config_for


@pytest.fixture
def srv(serve, tiny_model_dir):
    return serve(config_for(tiny_model_dir, limits=SMALL_LIMITS))

"""A short soak in CI: `python -m tests.soak` against a live daemon with the default model.

`make soak` runs the same suite for longer (SOAK_SECONDS, 120 by default).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO

SECONDS = 25


@pytest.mark.slow
def test_short_soak_passes(default_model_dir):
    result = subprocess.run([sys.executable, "-m", "tests.soak", "--seconds", str(SECONDS)], cwd=REPO,
                            capture_output=True, text=True, timeout=SECONDS + 240)
    print(result.stdout)  # the table, shown with -s or on failure
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "soak passed" in result.stdout
    assert "\ncache: " in result.stdout and "\nkeys: " in result.stdout
    for row in ("good /infer multipart", "good /infer absolute-form", "bad decompression bomb", "bad tiny chunks",
                "bad jpeg cut and closed", "slow head trickle", "idle connection", "admin reload with token",
                "pipelined /health", "keyed below its limit", "keyed over its limit", "keyed unknown key",
                "cache duplicates"):
        assert row in result.stdout, row

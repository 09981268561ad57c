"""schemathesis against a live inferd (issue 14): every operation of /openapi.json, every check
(no 5xx, statuses, content types, headers and bodies as documented, invalid data rejected, valid
data accepted, 405 with Allow for other methods), all four phases. The CLI runs as a subprocess
against an in-process server with the default model, bounded by --max-examples and a timeout;
tests/schemathesis.toml and tests/schemathesis_hooks.py say what the generator is told and why.

The short run is in the fast suite; the long one (`-m slow`) draws 100 examples per operation."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO, config_for

pytest.importorskip("schemathesis")
ST = shutil.which("st", path=str(Path(os.sys.executable).parent)) or "st"


@pytest.fixture(scope="module")
def lite0(default_model_dir):
    from tests.support import start_in_process

    server = start_in_process(config_for(default_model_dir, logging={"access_log": "false"}))
    yield server
    server.close()


def run_schemathesis(url: str, tmp_path: Path, *, max_examples: int, timeout: int, phases: str, seed: int) -> None:
    """`st run` with every check; fails with its report unless it found no issue. (--max-time would
    make fuzzing repeat until the time is spent: the run is bounded by --max-examples instead.)"""
    environment = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(REPO),
                   "INFERD_TEST_LABELS": "1000"}
    command = [ST, "--config-file", str(REPO / "tests" / "schemathesis.toml"), "--no-color", "run",
               f"{url}/openapi.json", "--max-examples", str(max_examples),
               "--phases", phases, "--seed", str(seed), "--generation-database", "none",
               "--report", "junit", "--report-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-4000:]
    summary = done.stdout[-3000:]
    assert "20 selected / 20 total" in done.stdout and " generated, " in summary and "failure" not in summary, summary


def test_schemathesis_short_run(lite0, tmp_path):
    run_schemathesis(lite0.url, tmp_path, max_examples=8, timeout=120, phases="examples,coverage,fuzzing", seed=14)


@pytest.mark.slow
def test_schemathesis_long_run(lite0, tmp_path):
    run_schemathesis(lite0.url, tmp_path, max_examples=100, timeout=400,
                     phases="examples,coverage,fuzzing,stateful", seed=1414)

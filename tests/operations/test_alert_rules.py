"""The Prometheus rules in systemd/prometheus/ pass `promtool check rules` and the unit tests of
tests/data/prometheus/rules.test.yml, and those tests can fail: every alert has a case that must
fire it and one that must not, and moving any threshold to 0 or out of reach breaks them.

promtool comes from Debian's `prometheus` package (`make system-deps`); without it these skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.support import PROMTOOL, REPO, needs_promtool


RULES_DIR = REPO / "systemd" / "prometheus"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
UNIT_TESTS = REPO / "tests" / "data" / "prometheus" / "rules.test.yml"
ALERTS = re.findall(r"(?m)^\s+- alert: (\w+)$", (RULES_DIR / "inferd-alerts.rules.yml").read_text())
THRESHOLDS = re.findall(r"(?m)^\s+- record: (inferd:\w+:threshold)$",
                        (RULES_DIR / "inferd-thresholds.rules.yml").read_text())


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_the_rule_files_are_found():
    assert [p.name for p in RULE_FILES] == ["inferd-alerts.rules.yml", "inferd-recording.rules.yml",
                                            "inferd-thresholds.rules.yml"]
    assert len(ALERTS) == 9 and len(THRESHOLDS) == 6


@needs_promtool
def test_promtool_check_rules_is_clean():
    result = promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES), result.stdout
    assert "WARNING" not in result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_does_not():
    text = UNIT_TESTS.read_text()
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", text))
    quiet = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts: \[\]", text))
    assert firing == set(ALERTS) and quiet == set(ALERTS), (firing, quiet)


def with_threshold(tmp_path: Path, name: str, value: str) -> Path:
    """A copy of the rules and their unit tests in tmp_path, with threshold `name` set to value."""
    rules, tests = tmp_path / "systemd" / "prometheus", tmp_path / "tests" / "data" / "prometheus"
    shutil.copytree(RULES_DIR, rules)
    tests.mkdir(parents=True)
    shutil.copy(UNIT_TESTS, tests)
    path = rules / "inferd-thresholds.rules.yml"
    text, count = re.subn(rf"(record: {re.escape(name)}\n\s+expr: )vector\([^)]*\)", rf"\g<1>vector({value})",
                          path.read_text())
    assert count == 1, name
    path.write_text(text)
    return tests / UNIT_TESTS.name


@pytest.mark.slow  # twelve promtool runs of about 1.2 s each
@needs_promtool
@pytest.mark.parametrize("name", THRESHOLDS)
@pytest.mark.parametrize("value", ["0", "1e18"], ids=["zero", "out-of-reach"])
def test_the_unit_tests_notice_a_changed_threshold(tmp_path, name, value):
    """At 0 a case that must stay quiet fires; out of reach, a case that must fire does not."""
    result = promtool("test", "rules", with_threshold(tmp_path, name, value))
    assert result.returncode != 0, result.stdout
    assert "FAILED" in result.stdout + result.stderr


def test_every_alert_has_a_runbook_entry():
    readme = (RULES_DIR / "README.md").read_text()
    alerts = (RULES_DIR / "inferd-alerts.rules.yml").read_text()
    for alert in ALERTS:
        assert f"\n### {alert}\n" in readme, alert
        assert f"runbook: systemd/prometheus/README.md#{alert.lower()}\n" in alerts, alert

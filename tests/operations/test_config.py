"""Config: INI + environment + flags, every error naming file, section, key and value."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from inferd import config
from inferd.config import Config, ConfigError
from tests.support import REPO



def test_example_file_lists_every_key_with_its_default():
    parsed = config.load(REPO / "inferd.conf.example")
    assert parsed == Config(source=parsed.source)
    text = (REPO / "inferd.conf.example").read_text()
    for section, key in config.PARSERS:
        assert f"\n{key} =" in text, f"[{section}] {key} missing from inferd.conf.example"


def test_example_runs_from_a_checkout():
    parsed = config.load(REPO / "inferd.conf.example")
    assert parsed.model_dir() == REPO / "models" / "efficientnet-lite0"


def test_values_are_converted():
    parsed = config.parse("[server]\nport = 9000\n[batching]\nmax_queue_delay_ms = 0.5\n"
                          "[limits]\nallowed_formats = jpeg, png\n[logging]\naccess_log = no\n")
    assert parsed.server.port == 9000
    assert parsed.batching.max_queue_delay_ms == 0.5
    assert parsed.limits.allowed_formats == frozenset({"JPEG", "PNG"})
    assert parsed.logging.access_log is False


def test_every_problem_is_reported_at_once_with_its_location():
    with pytest.raises(ConfigError) as caught:
        config.parse("[server]\nport = eighty\nmax_connections = 0\ncolour = blue\n[extra]\nx = 1\n",
                     source="/etc/inferd/inferd.conf")
    problems = caught.value.problems
    assert len(problems) == 4
    assert "/etc/inferd/inferd.conf: [server] port = 'eighty'" in problems[-2] or any(
        "[server] port = 'eighty'" in p for p in problems)
    assert any("[server] max_connections = '0': must be >= 1" in p for p in problems)
    assert any("[server] unknown key 'colour'" in p for p in problems)
    assert any("unknown section [extra]" in p for p in problems)
    assert all(p.startswith("/etc/inferd/inferd.conf") for p in problems)


def test_syntax_errors_name_the_file():
    with pytest.raises(ConfigError, match="broken.conf"):
        config.parse("no section header\n", source="broken.conf")


def test_missing_file_is_an_error_not_defaults(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        config.load(tmp_path / "absent.conf")


def test_environment_overrides_file_and_flags_override_environment():
    text = "[server]\nport = 9000\n[model]\ntop_k = 3\n"
    env = {"INFERD_SERVER_PORT": "9001", "TOP_K": "7"}
    assert config.parse(text, env=env).server.port == 9001
    assert config.parse(text, env=env).model.top_k == 7
    assert config.parse(text, env=env, overrides={("server", "port"): "9002"}).server.port == 9002


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="environment NUM_THREADS"):
        config.parse("", env={"NUM_THREADS": "many"})


def test_reference_model_path_may_name_the_onnx_file(tmp_path):
    onnx_file = tmp_path / "resnet50.onnx"
    parsed = config.parse("", env={"MODEL_PATH": str(onnx_file), "LABELS_PATH": "labels.txt"})
    assert parsed.model_file() == onnx_file
    assert parsed.model_dir() == tmp_path
    assert parsed.labels_path() == Path("labels.txt").resolve()


def test_relative_model_path_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "inferd.conf").write_text("[model]\npath = mymodel\n")
    assert config.load(tmp_path / "inferd.conf").model_dir() == tmp_path / "mymodel"


def test_check_config_flag_exits_2_with_the_key_named(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[batching]\nmax_batch_size = -1\n")
    result = subprocess.run([sys.executable, "-m", "inferd", "--config", str(bad), "--check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "[batching] max_batch_size = '-1': must be >= 1" in result.stderr
    good = subprocess.run([sys.executable, "-m", "inferd", "--config", str(REPO / "inferd.conf.example"),
                           "--check-config"], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr


def test_the_readme_lists_exactly_the_restart_only_keys():
    """config.py marks the keys a reload cannot change; the warning and the README use that mark."""
    text = (REPO / "README.md").read_text()
    sentence = text[text.index("these keys take effect only at"):].split("\n\n", 1)[0]
    named = re.findall(r"`(?:\[\w+\]\s+)?(\w+)`", sentence)
    assert sorted(named) == sorted(key for _, key in config.RESTART_ONLY)
    changed = config.restart_only_changes(config.parse(""), config.parse("[server]\nport = 9\n"))
    assert changed == ["[server] port"]


# -- restart-only keys (issue 23): a reload keeps them by construction -------------------------------

RESTART_ONLY_CHANGES = {("server", "host"): "127.0.0.2", ("server", "port"): "8123",
                        ("server", "max_connections"): "7", ("batching", "inference_workers"): "2",
                        ("limits", "max_inference_requests"): "3", ("limits", "max_other_requests"): "2"}


def test_every_restart_only_key_is_listed_here():
    assert set(config.RESTART_ONLY) == set(RESTART_ONLY_CHANGES)


@pytest.mark.parametrize("where", sorted(RESTART_ONLY_CHANGES), ids=lambda w: f"[{w[0]}] {w[1]}")
def test_a_reload_keeps_each_restart_only_key_and_takes_the_rest(where):
    from inferd.site import Site

    running = Site.of(config.parse("[cache]\nmax_bytes = 0\n"))
    section, key = where
    reloaded = config.parse(f"[{section}]\n{key} = {RESTART_ONLY_CHANGES[where]}\n[cache]\nmax_bytes = 4096\n")
    site = Site.of(reloaded, None, running)
    assert getattr(getattr(site.config, section), key) == getattr(getattr(running.config, section), key)
    assert site.config.cache.max_bytes == 4096  # the rest of the reload is in force
    assert config.restart_only_changes(running.config, reloaded) == [f"[{section}] {key}"]


# -- each kind of value a key takes (was tests/operations/test_config.py) ------------------------------

@pytest.mark.parametrize("section, key, value, reason", [
    ("server", "max_connections", "0", "must be >= 1"),
    ("model", "intra_op_threads", "-1", "must be >= 0"),
    ("server", "request_timeout", "0", "must be > 0"),
    ("server", "request_timeout", "nan", "must be > 0"),
    ("batching", "max_queue_delay_ms", "-0.5", "must be >= 0"),
    ("server", "port", "65536", "must be 0..65535"),
    ("server", "docs", "maybe", "must be true or false"),
    ("logging", "access_log", "sometimes", "must be true or false"),
    ("limits", "allowed_formats", "JPEG HEIC", "choose from BMP GIF JPEG PNG TIFF WEBP"),
    ("limits", "allowed_formats", ",", "choose from BMP GIF JPEG PNG TIFF WEBP"),
    ("logging", "level", "verbose", "must be debug, info, warning or error"),
    ("models", "version_policy", "latest 0", 'must be "latest N", "all" or "specific V [V ...]"'),
    ("models", "version_policy", "newest", 'must be "latest N", "all" or "specific V [V ...]"'),
])
def test_a_bad_value_is_refused_with_its_reason(section, key, value, reason):
    with pytest.raises(ConfigError) as caught:
        config.parse(f"[{section}]\n{key} = {value}\n", source="inferd.conf")
    assert caught.value.problems == [f"inferd.conf: [{section}] {key} = {value!r}: {reason}"]


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("false", False), ("yes", True), ("off", False), ("1", True), ("0", False),
])
def test_docs_takes_the_usual_booleans(text, expected):
    assert config.parse(f"[server]\ndocs = {text}\n").server.docs is expected
    assert config.parse("").server.docs is True


def test_model_path_naming_a_directory_keeps_the_directory(tmp_path):
    parsed = config.parse("", env={"MODEL_PATH": str(tmp_path)})
    assert (parsed.model_dir(), parsed.model.onnx_file) == (tmp_path, "")

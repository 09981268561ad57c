"""Each kind of value a config key takes, refused with its reason (inferd/config.py's validators),
and the reference design's MODEL_PATH naming a directory. `make coverage` showed these branches
unreached (issue 14)."""

from __future__ import annotations

import pytest

from inferd import config
from inferd.config import ConfigError


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

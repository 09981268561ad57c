"""onnxruntime's optimised graphs, cached between starts (inferd/optimized.py): the same answers,
a cache entry per model, onnxruntime version, CPU and threads, and a bad entry rebuilt."""

from __future__ import annotations

import numpy as np

from inferd import model, optimized


def load(directory, cache, threads=1):
    return model.load(directory, directory / "model.onnx", directory / "labels.txt", intra_op_threads=threads,
                      optimized_cache=cache)


def test_the_cached_graph_answers_like_the_model_and_is_reused(tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    batch = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    plain = load(tiny_model_dir, None).run(batch)
    first = load(tiny_model_dir, cache)
    (entry,) = cache.iterdir()
    assert entry.name.endswith("-t1x1.onnx") and "ort" in entry.name
    stamp = entry.stat().st_mtime_ns
    second = load(tiny_model_dir, cache)
    assert entry.stat().st_mtime_ns == stamp  # read, not written again
    np.testing.assert_allclose(first.run(batch), plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second.run(batch), plain, rtol=1e-5, atol=1e-6)
    load(tiny_model_dir, cache, threads=2)
    assert len(list(cache.iterdir())) == 2  # other threads, another entry


def test_an_entry_that_does_not_load_is_built_again(tiny_model_dir, tmp_path, caplog):
    cache = tmp_path / "cache"
    load(tiny_model_dir, cache)
    (entry,) = cache.iterdir()
    entry.write_bytes(b"not a graph")
    reloaded = load(tiny_model_dir, cache)
    assert reloaded.run(np.zeros((1, 3, 224, 224), np.float32)).shape == (1, 1000)
    assert entry.read_bytes() != b"not a graph" and "does not load" in caplog.text


def test_the_key_names_the_cpu_and_onnxruntime(tmp_path):
    name = optimized.cache_file(tmp_path, b"model bytes", 2, 1).name
    assert optimized.cpu_features() in name and __import__("onnxruntime").__version__ in name

"""The peer table's machinery (issue 12): process trees, starting a server, the targets, the CPU bound,
install sizes, the peers' preprocessing and the int8 build. Real processes, sockets and models;
the peer frameworks themselves run only in `make bench-peers` (their venvs are not in CI's)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bench import contenders, cpubound, install_size, peer_table, proctree
from bench.peers import classifier
from inferd.imaging import preprocess
from inferd.config import KNOWN_FORMATS
from inferd.manifest import read_manifest
from tests.support import model_build

FORKING_SERVER = textwrap.dedent("""
    import os, socket, sys, time
    listener = socket.create_server(("127.0.0.1", 0))
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
    print(listener.getsockname()[1], flush=True)
    time.sleep(60)
""")


@pytest.fixture
def forking_server():
    """A real process that forks a child and listens on a port the OS chose; killed afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", FORKING_SERVER], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    port = int(proc.stdout.readline())
    yield proc, port
    os.killpg(proc.pid, 9)
    proc.wait()


def test_proctree_sees_the_child_the_port_and_the_memory_of_the_whole_tree(forking_server):
    proc, port = forking_server
    members = proctree.tree(proc.pid)
    assert len(members) == 2 and members[0] == proc.pid
    assert proctree.listening_ports(proc.pid) == {port}
    rss, pss = proctree.memory_kib(proc.pid)
    assert rss > proctree.memory_kib(members[1])[0] > 0 and 0 < pss <= rss


def test_peak_memory_keeps_the_largest_sample(forking_server):
    proc, _ = forking_server
    with proctree.PeakMemory(proc.pid, interval=0.01) as peak:
        pass
    assert peak.rss >= proctree.memory_kib(proc.pid)[0] * 0.9 and peak.processes == 2


def test_inferd_starts_as_a_contender_and_answers_with_its_top_label(tiny_model_dir, images, tmp_path):
    probe = contenders.INFERD.body(images["cat.jpg"], "cat.jpg")
    server = contenders.start(contenders.INFERD, tiny_model_dir, tmp_path, probe, timeout=60)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        assert 0 < server.to_health <= server.to_answer < 60
        assert server.top1.startswith("r")  # the tiny model's labels are colours, "r3g2b1"
    finally:
        server.stop()
    assert server.proc.returncode is not None and not contenders._group_alive(server.proc.pid)


def test_a_server_that_exits_is_reported_with_its_log(tmp_path):
    broken = contenders.Contender("broken", (sys.executable, "-c", "print('no model here'); raise SystemExit(3)"),
                                  "/health", "/infer", "multipart")
    with pytest.raises(RuntimeError, match="(?s)broken exited \\(3\\).*no model here"):
        contenders.start(broken, tmp_path, tmp_path, ("image/jpeg", b""), timeout=30)


def test_request_bodies_carry_the_same_image_in_each_peer_format():
    data = b"\xff\xd8 a jpeg \xff\xd9"
    kserve = next(c for c in contenders.PEERS if c.request == "kserve-v1")
    mosec = next(c for c in contenders.PEERS if c.request == "msgpack")
    content_type, body = kserve.body(data, "x.jpg")
    assert content_type == "application/json"
    assert base64.b64decode(json.loads(body)["instances"][0]["image"]["b64"]) == data
    content_type, body = mosec.body(data, "x.jpg")
    assert content_type == "application/msgpack"
    # fixmap(1), fixstr(5) "image", bin32 with a big-endian length, then the bytes
    assert body[:7] == b"\x81\xa5image" and body[7] == 0xC6
    assert int.from_bytes(body[8:12], "big") == len(data) and body[12:] == data


@pytest.mark.parametrize("answer, label", [
    (b'{"predictions": [{"label": "tabby", "index": 281}]}', "tabby"),  # inferd, LitServe, mosec
    (b'[{"predictions": [{"label": "tabby"}], "model": "m"}]', "tabby"),  # BentoML's batchable list
    (b'{"predictions": [{"predictions": [{"label": "tabby"}]}]}', "tabby"),  # KServe V1
    (b"not json", "?"),
])
def test_top_label_finds_the_first_label_however_it_is_nested(answer, label):
    assert contenders.top_label(answer) == label


def test_missing_peer_venvs_are_named():
    peer = contenders.Contender("ghost", ("python",), "/", "/infer", "multipart",
                                venv=contenders.servers.REPO / ".venv-peers" / "ghost-never-installed")
    assert "make bench-peers-venvs" in peer.missing()
    assert contenders.INFERD.missing() is None


def _result(throughput: float, p99: float) -> dict:
    return {"throughput": throughput, "p50_ms": p99 / 2, "p99_ms": p99, "requests": 10, "ok": 10}


def _record(rates: dict, p99: list[float], rss_mb: float, processes: int, start: float) -> peer_table.Record:
    """rates: c -> throughput per round (both images alike); p99 at c=16 per round."""
    record = peer_table.Record(rss_kib=[rss_mb * 1024], pss_kib=[rss_mb * 1024], processes=processes,
                               to_health=[start], to_answer=[start], top1="tabby")
    for label in ("small", "photo"):
        for c, per_round in rates.items():
            record.load[(label, c)] = [_result(rate, p99[n] if c == 16 else 10.0) for n, rate in enumerate(per_round)]
    return record


def test_targets_divide_within_each_round_and_take_the_median():
    records = {
        "inferd": _record({1: [50, 60, 40], 16: [100, 90, 80]}, [200, 200, 200], rss_mb=200, processes=1, start=0.5),
        "litserve": _record({1: [40, 40, 40], 16: [80, 100, 40]}, [300, 100, 400], rss_mb=900, processes=7, start=2),
        "kserve": _record({1: [70, 50, 30], 16: [60, 60, 60]}, [250, 250, 250], rss_mb=400, processes=1, start=1.2),
    }
    for name in ("bentoml", "mosec"):
        records[name] = peer_table.Record(failure=f"{name} is not installed")
    result = peer_table.summarise(records, ["small", "photo"], peer_table.Settings(rounds=3, concurrency=(1, 16)))
    row = result["by_round"][0]
    # round 1: 100 / max(80, 70); round 2: 90 / 100; round 3: 80 / 60
    assert row["inferd/best peer by round"] == "1.25 0.9 1.333" and row["median"] == 1.25
    # p99 at c=16 against the lowest peer p99 of the round: 200/250, 200/100, 200/250
    assert row["p99 inferd/lowest peer by round"] == "0.8 2.0 0.8" and row["p99 median"] == 0.8
    checks = {c["name"].split(",")[0].split(" (")[0]: c for c in result["checks"]}
    assert checks["peers: inferd / best peer throughput"]["pass"] is False
    assert checks["peers: inferd p99 / lowest peer p99 at c=16"]["pass"] is True
    rss = checks["peers: inferd peak RSS / smallest single-process peer's"]
    assert rss["value"] == 0.5 and "kserve" in next(c["name"] for c in result["checks"] if "RSS" in c["name"])
    assert checks["peers: inferd start to first answer / fastest peer's"]["value"] == round(0.5 / 1.2, 3)
    assert result["skipped"] == {"bentoml": "bentoml is not installed", "mosec": "mosec is not installed"}


def test_cpu_bound_is_cores_over_cpu_seconds_per_image(tiny_model_dir, images):
    classify = cpubound.runner(tiny_model_dir, images["cat.jpg"])
    cpu = cpubound.cpu_seconds_per_image(classify, 1, 0.2)
    assert 0 < cpu < 0.5
    measured = cpubound.measure(classify, 0.2)
    assert measured["bound"] == pytest.approx(measured["cores"] / (measured["cpu_ms_per_image"] / 1000), rel=0.01)


def test_disk_usage_counts_a_hard_linked_file_once(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    before = install_size.disk_usage(tmp_path)
    os.link(tmp_path / "a", tmp_path / "b")
    assert install_size.disk_usage(tmp_path) == before >= 100_000


def test_peer_preprocessing_reads_the_manifest_as_inferd_does(default_model_dir, images):
    ours = classifier.read_manifest(default_model_dir / "model.ini")
    theirs = read_manifest(default_model_dir / "model.ini").input
    assert (ours.size, ours.resize, ours.interpolation, ours.layout, ours.value_range) == \
        (theirs.size, theirs.resize, theirs.interpolation, theirs.layout, theirs.value_range)
    assert ours.mean.tolist() == list(theirs.mean) and ours.std.tolist() == list(theirs.std)
    # Without JPEG draft mode (a PNG) the two pipelines differ only in how they resample the crop.
    peer = classifier.preprocess(images["coffee.png"], ours)
    daemon = preprocess.to_tensor(images["coffee.png"], theirs, max_pixels=1 << 30, formats=KNOWN_FORMATS)
    assert peer.shape == daemon.shape and peer.dtype == np.float32
    assert np.abs(peer - daemon).mean() < 0.05  # on a (x - 127) / 128 scale


def test_cpu_flags_decide_reduce_range(tmp_path):
    import quantize
    with_vnni, without = tmp_path / "vnni", tmp_path / "avx2"
    with_vnni.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert quantize.cpu_has_vnni(str(with_vnni)) and not quantize.cpu_has_vnni(str(without))
    assert not quantize.cpu_has_vnni(str(tmp_path / "missing"))


@pytest.mark.slow
def test_int8_build_writes_a_qdq_model_that_classifies(tmp_path, images):
    import onnx
    path = model_build.build_model("tiny", tmp_path, int8=True)
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(p.key == model_build.RECIPE_KEY and "int8" in p.value for p in model.metadata_props)
    assert "-int8" in (tmp_path / "model.ini").read_text()
    answer = classifier.Classifier(tmp_path).classify([images["cat.jpg"]])[0]["predictions"]
    assert len(answer) == 5 and answer[0]["label"].startswith("r")
    assert model_build.build_model("tiny", tmp_path, int8=True) == path  # up to date: not rebuilt

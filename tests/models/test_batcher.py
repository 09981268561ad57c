"""The batcher with a real (tiny) ONNX model: delay bound, batch size cap, all-or-nothing submit,
drain on stop, who runs a batch, and every future getting its own row.

The model runs for real; `Recorder` only notes when each batch started, how big it was and on which
thread, and can hold a batch at a gate so a test decides when the session is busy. Timing bounds carry a
generous margin: they catch a timer started from the wrong moment (TorchServe #2478), not jitter.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from inferd import config, model as model_module
from inferd.batcher import Batcher, BatcherStopped, QueueFull
from inferd.lease import InferenceTimeout, Lease

MARGIN = 0.08  # seconds of scheduling slack on a busy 2-core machine


class Recorder:
    """Wraps a loaded Model: records (start time, batch size) of each run; optionally gated."""

    def __init__(self, model):
        self.model = model
        self.name = model.name
        self.batches: list[tuple[float, int]] = []
        self.threads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append((time.monotonic(), len(batch)))
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.gate.wait(30), "test never opened the gate"
        return self.model.run(batch)

    def sizes(self) -> list[int]:
        return [size for _, size in self.batches]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return model_module.load(tiny_model_dir, tiny_model_dir / "model.onnx", tiny_model_dir / "labels.txt",
                             intra_op_threads=1)


@pytest.fixture
def start(tiny):
    started: list[Batcher] = []

    def make(**settings) -> tuple[Batcher, Recorder]:
        recorder = Recorder(tiny)
        options = {"max_batch_size": 8, "max_queue_delay_ms": 0, "max_queue_size": 64, **settings}
        started.append(Batcher(recorder, **options).start())
        return started[-1], recorder

    yield make
    for batcher in started:
        batcher.stop(10)


def solid(value: float) -> np.ndarray:
    return np.full((3, 224, 224), value, dtype=np.float32)


class Occupied:
    """A gated batch of one submitted from another thread by a request that is alone, so that
    thread runs it (a handler's, as in the daemon); the session counts as busy from construction
    until release()."""

    def __init__(self, batcher: Batcher, recorder: Recorder):
        self.recorder = recorder
        self.futures: list = []
        recorder.gate.clear()
        self.thread = threading.Thread(target=self._submit_alone, args=(batcher,))
        self.thread.start()
        assert recorder.entered.wait(5), "the gated batch never started"

    def _submit_alone(self, batcher: Batcher) -> None:
        with batcher.user():
            self.futures.extend(batcher.submit([solid(0.0)]))

    def release(self) -> list:
        self.recorder.gate.set()
        self.thread.join(10)
        return self.futures


def test_a_batch_closes_max_delay_after_its_first_item_not_after_the_last(start):
    """Items trickle in every 20 ms for 0.5 s; each batch must run 100 ms after its first item."""
    delay = 0.1
    batcher, recorder = start(max_batch_size=64, max_queue_delay_ms=delay * 1000)
    submitted, futures = [], []
    for i in range(25):
        submitted.append(time.monotonic())
        futures += batcher.submit([solid(0.5)])
        time.sleep(0.02)
    for future in futures:
        future.result(10)
    first = 0
    for started_at, size in recorder.batches:
        waited = started_at - submitted[first]
        assert waited <= delay + MARGIN, f"batch of {size} started {waited * 1000:.0f} ms after its first item"
        assert waited >= delay - 0.001, "a batch that was not full closed before its delay"
        first += size
    assert len(recorder.batches) >= 3 and sum(recorder.sizes()) == 25


def test_the_delay_counts_from_arrival_even_while_the_thread_was_busy(start):
    """An item that waited behind a running batch for longer than the delay runs at once after it."""
    delay = 0.3
    batcher, recorder = start(max_queue_delay_ms=delay * 1000)
    recorder.gate.clear()
    (busy,) = batcher.submit([solid(0.1)])
    assert recorder.entered.wait(5)  # the thread is inside run() with the first item
    time.sleep(delay)  # so that the first batch ran the full delay; now hold it
    (waiting,) = batcher.submit([solid(0.9)])
    time.sleep(delay + 0.05)  # the waiting item's delay has passed while the thread was busy
    released = time.monotonic()
    recorder.gate.set()
    busy.result(10), waiting.result(10)
    second_started = recorder.batches[1][0]
    assert second_started - released < delay - MARGIN, "the delay was counted from when the thread got free"


def test_a_full_batch_runs_without_waiting_for_the_delay(start):
    batcher, recorder = start(max_batch_size=4, max_queue_delay_ms=30_000)
    began = time.monotonic()
    futures = batcher.submit([solid(v / 10) for v in range(4)])
    for future in futures:
        future.result(10)
    assert time.monotonic() - began < 5 and recorder.sizes() == [4]


def test_batches_never_exceed_max_batch_size(start):
    batcher, recorder = start(max_batch_size=3, max_queue_delay_ms=50)
    recorder.gate.clear()
    first = batcher.submit([solid(0.0)])
    assert recorder.entered.wait(5)
    rest = batcher.submit([solid(v / 10) for v in range(10)])  # queued while the thread is busy
    recorder.gate.set()
    for future in first + rest:
        future.result(10)
    assert max(recorder.sizes()) == 3 and sum(recorder.sizes()) == 11
    assert recorder.sizes()[:4] == [1, 3, 3, 3]


def test_submit_is_all_or_nothing_at_the_queue_bound(start):
    batcher, recorder = start(max_queue_size=4)
    busy = Occupied(batcher, recorder)  # running, so not in the queue
    queued = batcher.submit([solid(0.1), solid(0.2), solid(0.3)])
    with pytest.raises(QueueFull):
        batcher.submit([solid(0.4), solid(0.5)])  # 3 + 2 > 4: neither is queued
    assert batcher.depth() == 3
    queued += batcher.submit([solid(0.6)])  # 3 + 1 fits
    assert batcher.depth() == 4
    assert all(f.result(10).shape == (1000,) for f in busy.release() + queued)
    assert sum(recorder.sizes()) == 5


def test_stop_refuses_new_work_and_finishes_what_is_queued(start):
    batcher, recorder = start(max_batch_size=2)
    busy = Occupied(batcher, recorder)
    futures = batcher.submit([solid(0.2), solid(0.4), solid(0.6)])
    stopper = threading.Thread(target=batcher.stop, args=(30,))
    stopper.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # stop() has set the flag once submit is refused
        try:
            batcher.submit([solid(1.0)])[0].result(10)
        except BatcherStopped:
            break
        time.sleep(0.01)
    else:
        pytest.fail("submit still accepted work after stop()")
    futures += busy.release()
    stopper.join(30)
    assert not stopper.is_alive()
    assert all(future.done() and future.exception() is None for future in futures)


def test_each_future_gets_the_row_of_its_own_image(start, tiny):
    batcher, recorder = start(max_queue_delay_ms=200)
    values = [0.0, 0.15, 0.35, 0.55, 0.75, 0.95]
    tensors = [np.full((3, 224, 224), 0.0, np.float32) for _ in values]
    for tensor, value in zip(tensors, values):
        tensor[0] = value  # a different red level per image: a different class from the tiny model
        tensor[2] = 1.0 - value
    futures = batcher.submit(tensors)
    rows = [future.result(10) for future in futures]
    assert recorder.sizes() == [len(values)]
    for tensor, row in zip(tensors, rows):
        np.testing.assert_allclose(row, tiny.run(tensor[None])[0], rtol=1e-5, atol=1e-6)
    assert len({int(np.argmax(row)) for row in rows}) == len(values)


def test_a_lone_image_with_no_delay_runs_on_the_submitting_thread(start):
    batcher, recorder = start()
    with batcher.user():
        (future,) = batcher.submit([solid(0.3)])
    assert future.done() and future.result().shape == (1000,)
    assert recorder.threads == [threading.current_thread().name]


def test_under_load_even_an_idle_session_is_left_to_the_inference_thread(start):
    """Other requests in flight will submit soon: the inference thread runs batch after batch
    without handing the session back and forth."""
    batcher, recorder = start()
    with batcher.user(), batcher.user():  # another request holds the batcher too
        (future,) = batcher.submit([solid(0.3)])
    future.result(10)
    assert recorder.threads[0].startswith("inference-")


def test_a_batcher_counts_the_requests_that_hold_it(start):
    batcher, _ = start()
    assert batcher.users() == 0 and batcher.wait_unused(0)
    with batcher.user():
        assert batcher.users() == 1 and not batcher.wait_unused(0)
        with batcher.user():
            assert batcher.users() == 2
        assert batcher.users() == 1
    assert batcher.users() == 0 and batcher.wait_unused(0)


def test_images_that_arrive_while_a_batch_runs_wait_for_the_inference_thread(start):
    batcher, recorder = start()
    busy = Occupied(batcher, recorder)
    queued = batcher.submit([solid(0.2), solid(0.4), solid(0.6)])
    assert not any(f.done() for f in queued) and batcher.depth() == 3
    busy.release()
    assert all(f.result(10).shape == (1000,) for f in queued)
    assert recorder.sizes() == [1, 3]
    assert recorder.threads[0] == busy.thread.name and recorder.threads[1].startswith("inference-")


def test_with_a_delay_a_lone_image_waits_for_company_on_the_inference_thread(start):
    batcher, recorder = start(max_queue_delay_ms=50)
    with batcher.user():
        (future,) = batcher.submit([solid(0.3)])
    assert not future.done()
    future.result(10)
    assert recorder.threads[0].startswith("inference-")


def test_a_run_that_never_returns_stops_the_heartbeat_on_either_thread(start):
    """The watchdog's view: alive() turns False while one batch is stuck, even one run by its submitter."""
    batcher, recorder = start()
    assert batcher.alive(stall_after=1.0) and batcher.running()
    busy = Occupied(batcher, recorder)
    try:
        time.sleep(1.6)  # longer than the idle thread's 1 s wait, which must not refresh the heartbeat
        assert not batcher.alive(stall_after=1.0)
    finally:
        busy.release()
    busy.futures[0].result(10)
    time.sleep(1.2)
    assert batcher.alive(stall_after=1.0)


def test_running_covers_a_submitter_run_after_the_thread_ended(start):
    batcher, recorder = start()
    busy = Occupied(batcher, recorder)
    try:
        batcher.stop(5)  # nothing queued: the thread ends while the submitter's batch still runs
        assert batcher.running()
    finally:
        busy.release()
    assert not batcher.running()


def test_the_request_timeout_cuts_off_a_queued_image_not_a_running_batch(start):
    """[batching] request_timeout bounds the wait for a result: an image queued behind a stuck
    batch gets 503, while the request whose batch is running (on its own thread) gets its answer."""
    batcher, recorder = start()
    lease = Lease(config.parse("[batching]\nrequest_timeout = 0.3\n", "<test>"),
                  SimpleNamespace(batcher=batcher, metrics=None))
    recorder.gate.clear()
    lone: list = []

    def alone():
        with batcher.user():
            lone.extend(lease._infer([solid(0.0)], time.monotonic()))

    runner = threading.Thread(target=alone)
    runner.start()
    try:
        assert recorder.entered.wait(5)
        began = time.monotonic()
        with batcher.user(), pytest.raises(InferenceTimeout) as refused:
            lease._infer([solid(0.5)], began)
        assert refused.value.http_status == 503 and "timed out" in str(refused.value)
        assert 0.3 - 0.01 <= time.monotonic() - began < 0.3 + MARGIN * 5
        time.sleep(0.2)  # the running batch is now past the timeout too
    finally:
        recorder.gate.set()
        runner.join(10)
    ((scores, seconds),) = lone
    assert scores.shape == (1000,) and seconds > 0.3


def test_with_two_workers_two_batches_run_at_once_and_no_more(tiny):
    """inference_workers = 2: two inference threads, each with its batch in the model at once."""
    gate = threading.Event()
    inside, most = [], [0]

    class Slow:
        name = "slow"

        def run(self, batch):
            inside.append(1)
            most[0] = max(most[0], len(inside))
            gate.wait(10)
            inside.pop()
            return tiny.run(batch)

    batcher = Batcher(Slow(), max_batch_size=1, max_queue_delay_ms=0, max_queue_size=64, workers=2).start()
    try:
        futures = batcher.submit([solid(v / 10) for v in range(6)])
        deadline = time.monotonic() + 5
        while len(inside) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # a third batch would have entered by now
        assert len(inside) == 2 and batcher.depth() == 4
        gate.set()
        assert all(f.result(10).shape == (1000,) for f in futures) and most[0] == 2
    finally:
        gate.set()
        batcher.stop(10)


def test_a_run_gate_lets_in_its_permits_in_the_order_asked():
    from inferd.batcher import RunGate

    gate, order, inside, most = RunGate(2), [], [], [0]
    release = threading.Event()

    def run(n):
        with gate.turn():
            order.append(n)
            inside.append(n)
            most[0] = max(most[0], len(inside))
            release.wait(5)
            inside.remove(n)

    threads = []
    for n in range(5):
        threads.append(threading.Thread(target=run, args=(n,)))
        threads[-1].start()
        time.sleep(0.05)  # ask in order
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2, 3, 4] and most[0] == 2

"""From a configuration to warm models: load each model it names, check it, warm it up, and start
its batcher. Runs on the daemon's main loop only (at start and on reload)."""

from __future__ import annotations

from . import model as model_module
from .batcher import Batcher
from .config import Config
from .repository import LoadedModel


def load_configured(config: Config, metrics) -> tuple[list[LoadedModel], str]:
    """(loaded models, the default model's name) for `config`. Raises model.ModelError when a
    model cannot be served; nothing is left running then."""
    loaded = load_one(config, metrics)
    return [loaded], loaded.name


def load_one(config: Config, metrics, version: str = "1") -> LoadedModel:
    batching = config.batching
    model = model_module.load(
        config.model_dir(), config.model_file(), config.labels_path(),
        intra_op_threads=config.model.intra_op_threads, inter_op_threads=config.model.inter_op_threads,
        warmup_batch=batching.max_batch_size,
    )
    batcher = Batcher(model, max_batch_size=batching.max_batch_size,
                      max_queue_delay_ms=batching.max_queue_delay_ms,
                      max_queue_size=batching.max_queue_size, metrics=metrics)
    return LoadedModel(model.name, version, model, batcher.start())

"""What training, evaluation, benchmarks and analysis share at run time: device and fast-path
resolution (:mod:`.device`), the CPU allocator tuning (:mod:`.allocator`), loaders and epoch order
(:mod:`.loaders`), batch preparation (:mod:`.batches`), the prediction loop (:mod:`.predict`), the
distributed helpers (:mod:`.distributed`) and the graceful stop on Ctrl-C / SIGTERM (:mod:`.stop`). It
imports ``networks`` and ``if3d.data``, never ``if3d.train``.
"""

from if3d.runtime.batches import BatchPreparer, forward_model, model_streams, unwrap_model
from if3d.runtime.device import (
    FAST_PATH_DEFAULTS,
    RuntimeConfig,
    autocast_context,
    resolve_amp,
    resolve_compile,
    resolve_runtime,
)
from if3d.runtime.distributed import DistInfo, cleanup_distributed, init_distributed
from if3d.runtime.loaders import epoch_indices, make_loader
from if3d.runtime.predict import predict, summarize_predictions

__all__ = [
    "FAST_PATH_DEFAULTS",
    "BatchPreparer",
    "DistInfo",
    "RuntimeConfig",
    "autocast_context",
    "cleanup_distributed",
    "epoch_indices",
    "forward_model",
    "init_distributed",
    "make_loader",
    "model_streams",
    "predict",
    "resolve_amp",
    "resolve_compile",
    "resolve_runtime",
    "summarize_predictions",
    "unwrap_model",
]

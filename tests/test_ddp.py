"""DistributedDataParallel on CPU with the gloo backend and 2 processes: evaluation shards without
duplicates gather back to exactly the single-process result, and a DDP training run's validation
metrics equal a single-process evaluation of its checkpoint."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from _train_helpers import TinyFusion, make_dataset

from if3d.runtime.distributed import DistInfo, ShardedEvalSampler, cleanup_distributed, init_distributed

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_env(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)


def _evaluate_worker(rank: int, port: int, data: str, out: str) -> None:
    _set_env(rank, port)
    from if3d.data.dataset import PairedDataset
    from if3d.runtime import BatchPreparer, predict

    info = init_distributed("cpu")
    try:
        assert info.distributed
        assert info.world_size == WORLD
        torch.manual_seed(0)
        model = TinyFusion(num_classes=7).eval()
        ds = PairedDataset(data, "val", image_size=24)
        prep = BatchPreparer(info.device, model.input_streams, False, False, 24)
        res = predict(model, ds, prep, batch_size=4, workers=0, amp="off", info=info)
        np.savez(Path(out) / f"rank{rank}.npz", **res)
    finally:
        cleanup_distributed()


def _gather_worker(rank: int, port: int, out: str) -> None:
    """Rank 0 holds both samples (an [N, 3] output, a bool target); rank 1's shard is empty, as when a job has
    more ranks than samples, and it only has the zero-length placeholders of an empty prediction loop."""
    _set_env(rank, port)
    from if3d.runtime.distributed import gather_results

    init_distributed("cpu")
    try:
        if rank == 0:
            local = {"index": np.array([1, 0]), "au_pred": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32),
                     "active": np.array([True, False])}
        else:
            local = {"index": np.zeros(0, np.int64), "au_pred": np.zeros(0, np.float32),
                     "active": np.zeros(0, np.float32)}
        np.savez(Path(out) / f"rank{rank}.npz", **gather_results(local))
    finally:
        cleanup_distributed()


def _fit_worker(rank: int, port: int, argv: list[str]) -> None:
    _set_env(rank, port)
    from if3d.train.cli import config_from_args
    from if3d.train.engine import fit

    fit(config_from_args(argv))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 7 classes x 3 = 21 validation samples: the two shards differ in length (11 and 10)
    return make_dataset(tmp_path_factory.mktemp("ddp") / "tiny", per_class=4, val_per_class=3)


def test_sharded_eval_sampler_covers_each_sample_once():
    shards = [list(ShardedEvalSampler(21, r, WORLD)) for r in range(WORLD)]
    assert [len(s) for s in shards] == [11, 10]
    assert sorted(shards[0] + shards[1]) == list(range(21))


def test_gathered_evaluation_equals_single_process(data, tmp_path):
    mp.spawn(_evaluate_worker, args=(_free_port(), str(data), str(tmp_path)), nprocs=WORLD, join=True)
    from if3d.data.dataset import PairedDataset
    from if3d.runtime import BatchPreparer, predict

    torch.manual_seed(0)
    model = TinyFusion(num_classes=7).eval()
    ds = PairedDataset(data, "val", image_size=24)
    info = DistInfo(0, 1, 0, torch.device("cpu"), False)
    single = predict(model, ds, BatchPreparer(info.device, model.input_streams, False, False, 24),
                      batch_size=4, workers=0, amp="off", info=info)
    for rank in range(WORLD):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert got["index"].tolist() == list(range(21))  # every sample once, in dataset order
        for k in ("label", "prediction", "has_va"):
            assert np.array_equal(got[k], single[k]), k
        for k in ("probabilities", "valence_pred", "arousal_pred", "valence"):
            assert np.allclose(got[k], single[k], atol=1e-6, equal_nan=True), k


def test_a_rank_with_an_empty_shard_takes_the_other_ranks_shapes_and_dtypes(tmp_path):
    mp.spawn(_gather_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert got["index"].tolist() == [0, 1]
        assert got["au_pred"].tolist() == [[4.0, 5.0, 6.0], [1.0, 2.0, 3.0]]
        assert got["active"].dtype == bool
        assert got["active"].tolist() == [False, True]


def test_ddp_training_metrics_equal_single_process_evaluation(data, tmp_path):
    from if3d.evaluate import evaluate_checkpoint

    out = tmp_path / "run"
    argv = ["--model", "tiny_fusion_test", "--data", str(data), "--epochs", "2", "--batch-size", "8",
            "--workers", "0", "--image-size", "24", "--out", str(out), "--device", "cpu"]
    mp.spawn(_fit_worker, args=(_free_port(), argv), nprocs=WORLD, join=True)
    run = json.loads((out / "config.json").read_text())["run"]
    assert run["world_size"] == WORLD
    assert run["batch_size_per_rank"] == 4
    assert run["steps_per_epoch"] == 3  # 28 balanced draws / 2 ranks / 4 per rank
    rows = list(csv.DictReader(open(out / "metrics.csv", newline="")))
    assert len(rows) == 2
    m = evaluate_checkpoint(out / "last.pth", data=str(data), split="val", out=tmp_path / "eval", image_size=24,
                            batch_size=5, device="cpu", verbose=False)
    assert m["num_samples"] == 21
    assert float(rows[-1]["val_accuracy"]) == pytest.approx(m["accuracy"], abs=1e-6)
    assert float(rows[-1]["val_balanced_accuracy"]) == pytest.approx(m["balanced_accuracy"], abs=1e-6)
    assert float(rows[-1]["val_f1_macro"]) == pytest.approx(m["f1_macro"], abs=1e-6)

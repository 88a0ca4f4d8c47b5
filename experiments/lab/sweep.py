"""The sweep: for each task and rule, the selection runs on the validation split,
then the final runs of every seed with the chosen optimizer and rate.

Runs go one rule at a time; the compiled steps of a rule (`runs.StepCache`)
serve all its runs, and those of its first final seed then time the train step
of every rule of the task, interleaved (`lab.timing`). Every run has its own
directory under the sweep's; finished ones are read back, and a stopped one
resumes where it stopped. One progress bar counts the steps of the whole sweep.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from funcnn.data import num_batches
from funcnn.training.run import SignalStop
from lab import runs
from lab.tasks import EXTRA_CANDIDATES, RULE_WEIGHT_DECAY, Data, Task
from lab.timing import ROUNDS, STEPS, time_steps


@dataclasses.dataclass
class Plan:
    """What a sweep runs.

    Attributes:
        tasks: the tasks, in order.
        rules: rule names ("backprop" and registered names).
        seeds: the seeds of the final runs.
        select_seeds: the seeds of the selection runs.
        optimizers: the optimizer names the selection compares (each with
            every rate of the task).
        pairs: (optimizer, peak rate) candidates that replace those of
            `optimizers` and the task's rates, when given.
        out: the sweep directory.
        timing: (rounds, steps per round) of the interleaved step timing;
            0 rounds skips it.
    """

    tasks: list[Task]
    rules: list[str]
    seeds: list[int]
    select_seeds: list[int]
    optimizers: list[str]
    out: Path
    timing: tuple[int, int] = (ROUNDS, STEPS)
    pairs: list[tuple[str, float]] | None = None

    def candidates(self, task: Task, rule: str = "") -> list[tuple[str, float]]:
        """The (optimizer, rate) pairs the selection of entry `rule` compares:
        `pairs` when given, else `optimizers` x the task's rates and the rule's
        `EXTRA_CANDIDATES`."""
        if self.pairs:
            return list(self.pairs)
        extra = EXTRA_CANDIDATES.get(runs.parse_entry(rule)[0], ())
        return [(o, lr) for o in self.optimizers for lr in task.lrs] + [
            c for c in extra if c[0] not in self.optimizers or c[1] not in task.lrs
        ]


def choose(records: list[dict]) -> tuple[str, float]:
    """The (optimizer, lr) of the selection runs with the best mean validation
    accuracy; runs that diverged rank below every completed one, and ties go to
    the earlier candidate."""
    by_candidate: dict[tuple[str, float], list[dict]] = {}
    for r in records:
        by_candidate.setdefault((r["optimizer"], r["lr"]), []).append(r)

    def score(item):
        rs = item[1]
        completed = all(r["status"] == "completed" for r in rs)
        return (completed, np.mean([r["eval_accuracy"] or 0.0 for r in rs]))

    best = max(by_candidate.items(), key=score)  # max keeps the first of ties
    return best[0]


class Bar:
    """The sweep's progress bar over steps (tqdm on stderr), or plain lines."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.done = 0
        if enabled:
            from tqdm import tqdm  # lazy: only with a bar

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True,
                            file=sys.stderr)  # fmt: skip

    def start(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description(label)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def finish_run(self, steps: int) -> None:
        """Counts a run as done, whatever of it the bar saw (skipped batches of
        a resumed epoch, a diverged run's missing epochs)."""
        self.done += steps
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.refresh()

    def write(self, line: str, *, note: bool = False) -> None:
        """Prints a line above the bar; a `note` goes to stderr."""
        stream = sys.stderr if note else sys.stdout
        if self.bar is not None:
            self.bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _steps(task: Task, data: Data, rule: str = "") -> int:
    """The steps of one run of entry `rule` on `data` (a final run when `rule`
    is given: "<rule>_<k>x" trains k times the epochs)."""
    factor = runs.parse_entry(rule)[1]
    return factor * task.epochs * num_batches(len(data.x_train), task.batch_size)


def for_rule(task: Task, rule: str) -> Task:
    """`task` with the weight decay of `rule`'s runs (`RULE_WEIGHT_DECAY`)."""
    decay = RULE_WEIGHT_DECAY.get(task.dataset, {}).get(runs.parse_entry(rule)[0])
    if decay is None:
        return task
    return dataclasses.replace(task, weight_decay=decay)


def longer(task: Task, rule: str) -> Task:
    """The task of entry `rule`'s final runs: "<rule>_<k>x" trains k times the
    epochs (the cosine schedule spans them all)."""
    factor = runs.parse_entry(rule)[1]
    if factor == 1:
        return task
    return dataclasses.replace(task, epochs=factor * task.epochs)


def run_sweep(
    plan: Plan,
    prepared: dict[str, tuple[Data, Data]],
    *,
    progress: bool = True,
    report: Callable[[dict], None] = lambda results: None,
) -> tuple[dict, int]:
    """Runs (or resumes) `plan` on `prepared` (dataset -> `tasks.prepare`'s
    final and selection data); returns `(results, exit_code)`.

    `results[dataset][rule]` holds "selection" (the records of the selection
    runs), "chosen" ([optimizer, lr]) and "final" (the records of the final
    runs, one per seed). `report(results)` is called after every rule. The exit
    code is 0, or 130/143 when SIGINT/SIGTERM stopped the sweep after saving
    the current run's checkpoint.
    """
    total = 0
    for task in plan.tasks:
        final, selection = prepared[task.dataset]
        for rule in plan.rules:
            candidates = plan.candidates(task, rule)
            total += _steps(task, final, rule) * len(plan.seeds)
            if len(candidates) > 1:
                n_select = len(candidates) * len(plan.select_seeds)
                total += _steps(task, selection) * n_select
    bar = Bar(total, progress)
    results: dict = {t.dataset: {} for t in plan.tasks}
    try:
        with SignalStop() as stop:
            for task in plan.tasks:
                final, selection = prepared[task.dataset]
                done = results[task.dataset]
                # "forward_gradient_5x" shares the compiled steps of its rule.
                caches: dict[str, runs.StepCache] = {}
                for rule in plan.rules:
                    caches[rule] = caches.setdefault(
                        runs.parse_entry(rule)[0], runs.StepCache()
                    )
                for rule in plan.rules:
                    out = _rule(plan, task, rule, final, selection, bar, stop,
                                caches[rule])  # fmt: skip
                    if out is None:
                        return results, stop.exit_code
                    done[rule] = out
                    report(results)
                if plan.timing[0] > 0:
                    bar.start(f"{task.dataset}: timing the train steps")
                    timed = _step_times(plan, task, final, done, caches)
                    for rule, entry in timed.items():
                        done[rule]["step_time"] = entry
                    report(results)
    finally:
        bar.close()
    return results, 0


def _step_times(plan, task, data, done, caches) -> dict[str, dict]:
    """`timing.time_steps` of the first final seed's train step of every rule,
    read back from <out>/<dataset>/step_time.json when it holds these rules."""
    path = plan.out / task.dataset / "step_time.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if list(stored["rules"]) == list(done) and stored["timing"] == list(
            plan.timing
        ):
            return stored["rules"]
    steps, same = {}, {}
    for rule, entry in done.items():
        base = runs.parse_entry(rule)[0]
        if base != rule and base in done and done[base]["chosen"] == entry["chosen"]:
            same[rule] = base  # the same compiled step: its time is the base's
            continue
        optimizer, lr = entry["chosen"]
        spec = runs.RunSpec(for_rule(task, rule), rule, plan.seeds[0], optimizer, lr,
                            "final")  # fmt: skip
        steps[rule] = caches[rule].get(spec, data)
    batch = (data.x_train[: task.batch_size], data.y_train[: task.batch_size])
    rounds, per_round = plan.timing
    timed = time_steps(steps, batch, rounds=rounds, per_round=per_round)
    timed = {rule: timed[same.get(rule, rule)] for rule in done}
    stored = {"timing": list(plan.timing), "rules": timed}
    path.write_text(json.dumps(stored, indent=1) + "\n")
    return timed


def _one(spec, data, plan, cache, bar, stop) -> dict | None:
    record = runs.read_result(spec, data, plan.out)
    if record is None:
        bar.start(spec.label())
        record = runs.train(spec, data, plan.out, cache, stop=stop, on_batch=bar.step)
        if record is None:
            bar.write(
                f"learning_rules: stopped by {stop.name} in {spec.label()}; run "
                f"the same command again to resume from {spec.directory(plan.out)}",
                note=True,
            )
            return None
        accuracy = record["eval_accuracy"]
        shown = "n/a" if accuracy is None else f"{100 * (1 - accuracy):.2f}%"
        bar.write(
            f"{spec.label()}: {record['eval_set']} error {shown}, "
            f"{record['seconds_per_epoch']:.2f} s/epoch"
            + (" (diverged)" if record["status"] != "completed" else "")
        )
    bar.finish_run(_steps(spec.task, data))
    return record


def _all(specs, data, plan, cache, bar, stop) -> list[dict] | None:
    """The records of `specs` in order, or None once a signal stops one."""
    done = []
    for spec in specs:
        record = _one(spec, data, plan, cache, bar, stop)
        if record is None:
            return None
        done.append(record)
    return done


def _rule(plan, task, rule, final, selection, bar, stop, cache) -> dict | None:
    """The selection and final runs of entry `rule`. "<rule>_<k>x" is chosen
    by the selection runs of its rule (at 1x, read back when the rule ran
    first: a selection at k times the epochs would cost k times as much) and
    trains its final runs k times as long."""
    base = runs.parse_entry(rule)[0]
    task = for_rule(task, rule)
    candidates = plan.candidates(task, rule)
    selected: list[dict] | None = []
    if len(candidates) > 1:
        specs = [
            runs.RunSpec(task, base, seed, optimizer, lr, "select")
            for optimizer, lr in candidates
            for seed in plan.select_seeds
        ]
        selected = _all(specs, selection, plan, cache, bar, stop)
        if selected is None:
            return None
        optimizer, lr = choose(selected)
    else:
        optimizer, lr = candidates[0]
    run_task = longer(task, rule)
    specs = [runs.RunSpec(run_task, rule, s, optimizer, lr, "final")
             for s in plan.seeds]  # fmt: skip
    done = _all(specs, final, plan, cache, bar, stop)
    if done is None:
        return None
    return {"selection": selected, "chosen": [optimizer, lr], "final": done,
            "selected_as": base}  # fmt: skip

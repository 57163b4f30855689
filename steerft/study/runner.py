"""`run_study`: compute every missing point of the grid, then write the outputs from the point log.

With several processes (`workers: N`, or `accelerate launch` / `torchrun`) the ranks never talk.
Every rank walks the same list of work units (`points.work_units`: trained work first) and takes
each unit that is unfinished and free: a non-blocking file lock in `.claims/` of the study folder
marks it as taken, and the rank computes its missing points alone (a point is one small job, so
data parallelism inside it would only add communication), appends them to its own file and lets
the lock go. A unit another rank holds is passed over, so ranks take work as they come free and
finish close together whatever the points cost. The locks are fcntl locks: the system frees a
dead rank's, so a killed study resumes. A launcher's distributed environment is hidden from the
trainers so they do not wrap models for DDP. Rank 0 then waits until every point is in some file,
merges them and writes the outputs. It removes `.claims/` when it alone ran the study or its
local workers have ended; under a launcher it cannot know that the other ranks have stopped
walking (removing a lock file a rank holds would let another lock a new file of that name, and
two ranks would hold one unit), so the small hidden folder stays; the next run reuses it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from ..data import PromptFormatter
from ..io import read_json_object, write_json, write_text
from ..jobs import startup
from ..metrics import reference_continuations
from ..runconfig import ConfigError, as_dict, non_negative
from . import workers
from .across import write_across
from .config import StudyConfig, fingerprint
from .context import StudyContext, StudyData, eval_inputs, load_base_model, load_data, resolved_layers
from .evaluate import measure
from .judging import setup_judge
from .methods import METHODS
from .outputs import write_outputs
from .points import POINTS_FILE, Point, PointLog, finished_points, grid, log_path, unit_name, work_units
from .wandb_log import log_study

STUDY_FILE = "study.json"
LOCK_FILE = ".study.lock"
CLAIMS_DIR = ".claims"  # one lock file per work unit, held by the rank computing it
OWNER_FILE = ".study.owner"  # who holds the lock (the lock file itself is only flock'ed)
REFERENCES_FILE = "references.json"
MERGE_POLL_S = 2.0

# Set by torchrun (and so by `accelerate launch --multi_gpu`); hidden once read, see the module doc.
_DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                    "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def run_study(config: StudyConfig) -> Path:
    """Run (or resume) the n x method x seed grid on one behaviour dataset, or on each of `datasets`
    (one subfolder per behaviour, and a summary across them); returns the output folder."""
    rank, world = _claim_rank()
    non_negative(config, "seeds", "split_seed")
    out = startup.check_output_dir(config.output_dir)
    with _study_lock(out) if rank == 0 and workers.assignment() is None else contextlib.nullcontext():
        startup.set_threads(_threads(config))
        if config.datasets is None:
            return _run_behaviour(config, rank, world)
        folders = {dataset: _run_behaviour(behaviour_config(config, dataset), rank, world)
                   for dataset in config.datasets}
        if rank == 0:
            write_across(config, folders, out)
            print(f"steerft study {config.name}: wrote {out / 'report.md'} (across {', '.join(folders)})", flush=True)
    return out


def behaviour_config(config: StudyConfig, dataset: str) -> StudyConfig:
    """The one-behaviour study of a `datasets:` study: same grid, its own name and subfolder."""
    return dataclasses.replace(config, dataset=dataset, datasets=None, name=f"{config.name}-{dataset}",
                               output_dir=str(Path(config.output_dir) / dataset))


def _run_behaviour(config: StudyConfig, rank: int, world: int) -> Path:
    out = Path(config.output_dir)
    points = grid(config)
    data = load_data(config)
    _check_study_file(out, config, data)
    spawned = []
    if world == 1 and config.workers > 1:
        world = config.workers
        spawned = workers.spawn(config, world)
    try:
        _compute_share(config, data, points, out, rank, world)
        if rank == 0:
            records = _collect(points, out, spawned)
            workers.stop(spawned)
            if len(spawned) == world - 1:  # no other rank can be reading the claims any more
                shutil.rmtree(out / CLAIMS_DIR, ignore_errors=True)
            rows, summary = write_outputs(config, points, records, out)
            if config.wandb:
                log_study(config, rows, summary, out)
            print(f"steerft study {config.name}: wrote {out / 'report.md'}", flush=True)
    finally:
        workers.stop(spawned)
    return out


@contextlib.contextmanager
def _study_lock(out: Path) -> Iterator[None]:
    """One study process per folder at a time; a second is refused with the holder's pid and host."""
    out.mkdir(parents=True, exist_ok=True)
    with _held(out / LOCK_FILE) as held:
        if not held:
            owner = out / OWNER_FILE
            holder = owner.read_text().strip() if owner.is_file() else "another process"
            raise ConfigError(f"output_dir={str(out)!r} is in use by {holder}; wait for it to finish, or use "
                              "another output_dir.")
        try:
            write_text(out / OWNER_FILE, f"pid {os.getpid()} on {socket.gethostname()}\n")
            yield
        finally:
            (out / OWNER_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def _held(path: Path) -> Iterator[bool]:
    """Hold the file lock at `path` if no other process does (yields whether it does), without waiting.

    fcntl locks: the system frees a dead holder's. The lock file stays after release: unlinking one
    races with another process opening it."""
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _compute_share(config: StudyConfig, data: StudyData, points: list[Point], out: Path, rank: int,
                   world: int) -> None:
    """Walk the work units and compute each one that is unfinished and that no other rank holds."""
    units = work_units(points)
    finished = finished_points(out)
    left = [unit for unit in units if any(p.key not in finished for p in unit)]
    done = sum(p.key in finished for p in points)
    tag = f"[rank {rank}] " if world > 1 else ""
    print(f"{tag}steerft study {config.name}: of the study's {len(points)} points ({len(units)} work units), {done} "
          f"already done -> {out}", flush=True)
    if not left:
        return
    ctx = _context(config, data, out)  # validates the layers against the model
    if rank == 0:
        _record_study(out, config, data)
    log = PointLog(log_path(out, rank, world))
    progress = _Progress(tag, [p.key for p in points], out, done)
    (out / CLAIMS_DIR).mkdir(parents=True, exist_ok=True)
    for unit in left:
        with _held(out / CLAIMS_DIR / f"{unit_name(unit)}.lock") as claimed:
            if claimed:
                finished = finished_points(out)  # another rank may have finished the unit since the walk began
                _compute(ctx, [p for p in unit if p.key not in finished], log, progress)


def _threads(config: StudyConfig) -> int | None:
    """Torch threads per process: the config's, else the cores split between local workers, else torch's default."""
    if config.threads or config.workers == 1:
        return config.threads
    return max(1, (os.cpu_count() or 1) // config.workers)


def _claim_rank() -> tuple[int, int]:
    """This process's rank and the number of processes: a local worker's, or the launcher's (then hidden)."""
    assigned = workers.assignment()
    if assigned is not None:
        return assigned
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    for name in _DISTRIBUTED_ENV:
        os.environ.pop(name, None)
    return rank, world


def _study_record(config: StudyConfig, data: StudyData) -> dict[str, Any]:
    return {"fingerprint": fingerprint(config), "test_ids": [i.id for i in data.test],
            "val_ids": [i.id for i in data.val]}


def _check_study_file(out: Path, config: StudyConfig, data: StudyData) -> None:
    """A folder holds one study: refuse to resume points measured under other settings.

    A folder without points holds nothing to protect, whatever its study.json says."""
    study = _study_record(config, data)
    path = out / STUDY_FILE
    if path.is_file() and finished_points(out):
        saved = read_json_object(path, fix="restore it, or use a new output_dir", error=ConfigError)
        for key in study:
            if saved.get(key) != study[key]:
                raise ConfigError(f"output_dir={str(out)!r} holds a study with other settings "
                                  f"({_difference(saved, study, key)}); its points cannot be resumed. Use a new "
                                  "output_dir or restore those settings.")


def _record_study(out: Path, config: StudyConfig, data: StudyData) -> None:
    """Written once the whole config is known to run (layers checked against the model), before any point."""
    write_json(out / STUDY_FILE, {**_study_record(config, data), "config": as_dict(config)})


def _difference(saved: dict, study: dict, key: str) -> str:
    if key != "fingerprint":
        return f"{key} differ"
    old, new = saved.get(key) or {}, study[key]
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)


def _context(config: StudyConfig, data: StudyData, out: Path) -> StudyContext:
    model, tokenizer = load_base_model(config)
    layers, train_layers = resolved_layers(config, model)
    neutral, general, generation = eval_inputs(config)
    judge = setup_judge(config, model, tokenizer, data.test)
    return StudyContext(config, model, tokenizer, data, neutral, _references(model, tokenizer, neutral, config, out),
                        general, generation, layers, train_layers, judge=judge)


def _references(model, tokenizer, prompts: list[str], config: StudyConfig, out: Path) -> list[str]:
    """The base model's continuations of the neutral prompts, made once per study and kept with it."""
    path = out / REFERENCES_FILE
    if path.is_file():
        return json.loads(path.read_text())["continuations"]
    continuations = reference_continuations(model, tokenizer, [PromptFormatter(tokenizer).prompt(p) for p in prompts],
                                            max_new_tokens=config.eval.reference_tokens,
                                            batch_size=config.eval.batch_size)
    write_json(path, {"prompts": prompts, "continuations": continuations})
    return continuations


def compute_point(ctx: StudyContext, point: Point) -> dict[str, Any]:
    """Build the method's scorable and measure it; the record that goes into the point log."""
    method = METHODS[point.method]
    started = time.perf_counter()
    scorable = method.build(ctx, point.n, point.seed)
    record = measure(ctx, scorable, baseline=point.method == "none")
    return {"key": point.key, "method": point.method, "family": method.family, "n": point.n, "seed": point.seed,
            "shared": method.shared, **record, "wall_time_s": time.perf_counter() - started}


def _compute(ctx: StudyContext, todo: list[Point], log: PointLog, progress: _Progress) -> None:
    """Compute one unit's points; its memoised work goes with it (units share none)."""
    for point in todo:
        if workers.orphaned():
            raise SystemExit(f"{progress.tag}the study process that started this worker has exited; stopping.")
        record = compute_point(ctx, point)
        log.append(record)
        progress.report(point, record)
    ctx.memo.clear()


class _Progress:
    """One line per computed point: the study's finished points (every rank's), this rank's elapsed
    time, and an ETA from the pace at which the study's points have finished since this rank began."""

    def __init__(self, tag: str, keys: list[str], out: Path, done: int) -> None:
        self.tag, self.keys, self.out, self.done_at_start = tag, set(keys), out, done
        self.started = time.perf_counter()

    def report(self, point: Point, record: dict[str, Any]) -> None:
        done = len(self.keys & finished_points(self.out).keys())
        elapsed = time.perf_counter() - self.started
        eta = elapsed / (done - self.done_at_start) * (len(self.keys) - done)  # >= 1: this rank just added one
        print(f"{self.tag}[{done}/{len(self.keys)}] {point.label()}: accuracy {record['accuracy']:.2f}, mean margin "
              f"{record['mean_margin']:+.2f}, KL {record['kl']:.3f} ({record['wall_time_s']:.1f}s) | elapsed "
              f"{_clock(elapsed)}, ETA {_clock(eta)}", flush=True)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s"


def _collect(points: list[Point], out: Path, spawned: list) -> dict[str, dict[str, Any]]:
    """Rank 0: wait until every point is in some file, then merge all files into points.jsonl (grid order).

    Other ranks may still be running. A failed local worker fails the wait; a launched rank that
    dies takes the launcher, and so this wait, down with it. Points of an earlier, larger grid are kept.
    """
    keys = [p.key for p in points]
    while True:
        workers.check(spawned)
        records = finished_points(out)
        if all(key in records for key in keys):
            break
        time.sleep(MERGE_POLL_S)
    _rewrite_log(out / POINTS_FILE, [records[key] for key in keys] + [r for k, r in records.items() if k not in keys])
    for path in out.glob("points.rank*.jsonl"):
        path.unlink()
    return records


def _rewrite_log(path: Path, records: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))

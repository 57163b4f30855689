"""Training cost of a steering vector against LoRA, with TRL's SFT and DPO trainers.

    OMP_NUM_THREADS=1 python scripts/bench_train.py [--threads 1] [--steps 5] [--warmup 2]
    OMP_NUM_THREADS=1 python scripts/bench_train.py --whole-runs [--dataset dialogues] [--epochs 2] [--items 8] [--rounds 3]

SmolLM2-135M-Instruct (the default of `load_model`); steer = one vector at block 14 of 30, LoRA =
r=8 on q_proj and v_proj. Every configuration trains on the same sentiment rows in the same order,
with the same batch size and thread count, in this one process, through `steerft.training.build_trainer`
(the code path of the recipes). Read the ratios: the machine is shared and absolute times drift.

Measured per configuration:
- seconds per optimizer step (median over `--steps` steps after `--warmup` steps), from the
  trainer's step callbacks: data collation, forward, backward and optimizer update;
- memory as the process's resident set (RSS): its peak while training (VmHWM, reset before each
  configuration through /proc/self/clear_refs) and that peak's rise over the RSS just before the
  trainer was built (activations, gradients, optimizer state, TRL's dataset copies).

`--whole-runs` times whole trainings instead, through `steerft.training.fit_measured` (the code
path of `steerft train` and the study): `--epochs` epochs over `--items` rows of `--dataset`, from
building the trainer (where TRL precomputes DPO reference log-probs, steerft's default for adapters)
to the end of `train()`, for SFT and DPO, with steer trained with the cache of the states entering
its block (steerft's default) and without it (`cache_below_site=False`), and LoRA; medians of
`--rounds` rounds that run every configuration in turn. Besides the whole run and the sum of its
steps, it reports the median step after the first epoch, when every row has been seen (SFT's
first epoch is what fills steer's caches; DPO's reference pass fills them before the first step).

`--positions completion` gives the steer adapter `positions="completion"` (the vector acts on the
labelled tokens only, as in CAA): its prompts are then computed once per run, not only once per
DPO pair in each pass (`BelowSiteCache`); the table counts the prompt positions that ran no block.

`--whole-runs --head` times whole DPO runs of steer (cached) and LoRA with TRL's fused LM head
scoring only the labelled positions (`steerft.training.fused_head_on_labels_only`, steerft's
default) and scoring every position (TRL's own choice on CPU), in the same rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from peft import LoraConfig
from transformers import TrainerCallback

from steerft import SteerConfig
from steerft.data import PromptFormatter, load_behaviour, split_items, training_subset
from steerft.models import load_model
from steerft.training import build_trainer, fit_measured, training_rows

# name -> (a fresh PEFT config, the learning rate of the recipes)
ADAPTERS = {
    "steer (L14)": (lambda: SteerConfig(layers=[14]), 1e-1),
    "LoRA r=8 (q,v)": (lambda: LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"), 1e-3),
}


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step as the trainer reports its boundaries."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append(time.perf_counter() - self._start)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    """Start each configuration from a clean slate: hand freed memory back to the OS (glibc keeps it
    otherwise, hiding the next configuration's rise), then reset VmHWM (Linux >= 4.0)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def measure(method: str, adapter: str, rows, *, batch_size: int, warmup: int, steps: int) -> dict:
    model, tokenizer = load_model()
    _reset_peak_rss()
    before = _status_mib("VmRSS")
    timer = StepTimer()
    make_config, learning_rate = ADAPTERS[adapter]
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build_trainer(
            model, tokenizer, rows, method=method, peft_config=make_config(), callbacks=[timer],
            args=dict(output_dir=scratch, max_steps=warmup + steps, per_device_train_batch_size=batch_size,
                      learning_rate=learning_rate, logging_steps=warmup + steps, seed=0,
                      disable_tqdm=True),
        )
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        trainer.train()
    peak = _status_mib("VmHWM")
    seconds = statistics.median(timer.durations[warmup:])
    del trainer, model
    return {"method": method, "adapter": adapter, "trainable": trainable, "s_per_step": seconds,
            "peak_rss": peak, "rss_rise": peak - before}


STEER, LORA = ADAPTERS
# (method, adapter, cache the states entering the steered block, LM head on labelled positions only)
RUNS = [(method, adapter, cache, True) for method in ("sft", "dpo")
        for adapter, cache in ((STEER, True), (STEER, False), (LORA, None))]
HEAD_RUNS = [("dpo", adapter, cache, labels_only) for adapter, cache in ((STEER, True), (LORA, None))
             for labels_only in (True, False)]


def whole_run(method: str, adapter: str, rows, cache: bool | None, labels_only: bool, *, batch_size: int,
              epochs: int) -> dict:
    """Seconds from building the trainer to the end of training, seconds inside the optimizer steps
    (the trainer's step callbacks), the steps taken, and the token positions whose blocks below the
    steered one were replayed from the cache. `labels_only=False` leaves TRL's LM head scoring every
    position on CPU (steerft's labelled-only switch replaced by a no-op for this run)."""
    model, tokenizer = load_model()
    make_config, learning_rate = ADAPTERS[adapter]
    timer = StepTimer()
    head = (contextlib.nullcontext() if labels_only
            else mock.patch("steerft.training.fused_head_on_labels_only", contextlib.nullcontext))
    with tempfile.TemporaryDirectory() as scratch, head:
        _, budget = fit_measured(
            model, tokenizer, rows, method=method, peft_config=make_config(), cache_below_site=bool(cache),
            callbacks=[timer],
            args=dict(output_dir=scratch, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
                      learning_rate=learning_rate, logging_steps=1000, seed=0, disable_tqdm=True))
    per_epoch = -(-budget.steps // epochs)  # the steps after these run on rows the caches know
    return {"seconds": budget.wall_time_s, "step_seconds": sum(timer.durations),
            "later_step": statistics.median(timer.durations[per_epoch:] or [float("nan")]), "steps": budget.steps,
            "replayed": budget.tokens_replayed, "prompts": budget.tokens_prompt_reused,
            "forward": budget.tokens_forward}


def whole_runs(items, fmt, configurations: list[tuple], *, batch_size: int, epochs: int, rounds: int) -> str:
    runs: dict[tuple, list[dict]] = {}
    for _ in range(rounds):
        for method, adapter, cache, labels_only in configurations:
            run = whole_run(method, adapter, training_rows(method, items, fmt), cache, labels_only,
                            batch_size=batch_size, epochs=epochs)
            runs.setdefault((method, adapter, cache, labels_only), []).append(run)
            print(f"{method} {adapter} cache={cache} head on labels only={labels_only}: {run}", flush=True)

    def median(key: tuple, field: str) -> float:
        return statistics.median(run[field] for run in runs[key])

    lines = ["| method | adapter | blocks below the site | LM head scores | whole run s (median) | runs (s) "
             "| in steps s (median) | steps | s per step after the first epoch (median) "
             "| replayed (prompt) / forward tokens | LoRA ÷ this: whole run | LoRA ÷ this: steps "
             "| LoRA ÷ this: steps after the first epoch |",
             "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, done in runs.items():
        method, adapter, cache, labels_only = key
        lora = (method, LORA, None, labels_only)
        below = "-" if cache is None else ("once per row (cache)" if cache else "every step")
        head = "labelled positions" if labels_only else "every position"
        last, seconds = done[-1], ", ".join(f"{run['seconds']:.1f}" for run in done)
        lines.append(f"| {method.upper()} | {adapter} | {below} | {head} | {median(key, 'seconds'):.1f} | {seconds} | "
                     f"{median(key, 'step_seconds'):.1f} | {last['steps']} | {median(key, 'later_step'):.2f} | "
                     f"{last['replayed']:,} ({last['prompts']:,}) / {last['forward']:,} | "
                     f"{median(lora, 'seconds') / median(key, 'seconds'):.2f}× | "
                     f"{median(lora, 'step_seconds') / median(key, 'step_seconds'):.2f}× | "
                     f"{median(lora, 'later_step') / median(key, 'later_step'):.2f}× |")
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    lines = ["| method | adapter | trainable params | s/step (median) | steps/s | peak RSS (MiB) | RSS rise (MiB) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['method'].upper()} | {r['adapter']} | {r['trainable']:,} | {r['s_per_step']:.3f} | "
                     f"{1 / r['s_per_step']:.2f} | {r['peak_rss']:.0f} | {r['rss_rise']:.0f} |")
    lines += ["", "| method | LoRA s/step ÷ steer s/step | steer peak RSS ÷ LoRA | steer RSS rise ÷ LoRA |",
              "|---|---:|---:|---:|"]
    steer_name, lora_name = ADAPTERS
    for method in dict.fromkeys(r["method"] for r in results):
        steer = next(r for r in results if r["method"] == method and r["adapter"] == steer_name)
        lora = next(r for r in results if r["method"] == method and r["adapter"] == lora_name)
        lines.append(f"| {method.upper()} | {lora['s_per_step'] / steer['s_per_step']:.2f}× | "
                     f"{steer['peak_rss'] / lora['peak_rss']:.2f} | {steer['rss_rise'] / lora['rss_rise']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the same for every configuration)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--whole-runs", action="store_true", help="time whole trainings (see above)")
    parser.add_argument("--epochs", type=int, default=2, help="--whole-runs: epochs per run")
    parser.add_argument("--items", type=int, default=8, help="--whole-runs: training rows")
    parser.add_argument("--rounds", type=int, default=3, help="--whole-runs: rounds")
    parser.add_argument("--head", action="store_true",
                        help="--whole-runs: DPO with the LM head on labelled positions vs every position (see above)")
    parser.add_argument("--positions", default="all", choices=["all", "completion"],
                        help="the tokens the steer adapter acts on (see above)")
    parser.add_argument("--dataset", default="sentiment",
                        help="--whole-runs: a bundled behaviour set, e.g. sentiment (one-line prompts) or dialogues "
                             "(prompts of 150-178 tokens)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ADAPTERS[STEER] = (lambda: SteerConfig(layers=[14], positions=args.positions), ADAPTERS[STEER][1])
    _, tokenizer = load_model()
    dataset = load_behaviour(args.dataset if args.whole_runs else "sentiment")
    if args.whole_runs:
        items = training_subset(split_items(dataset.items, seed=0).train, args.items, seed=0)
        report = whole_runs(items, PromptFormatter(tokenizer), HEAD_RUNS if args.head else RUNS,
                            batch_size=args.batch_size, epochs=args.epochs, rounds=args.rounds)
        print(f"\nSmolLM2-135M-Instruct, {args.dataset}, {args.items} rows, {args.epochs} epochs, batch {args.batch_size}, "
              f"steer positions={args.positions}, "
              f"{args.threads} thread(s), median of {args.rounds} rounds, torch {torch.__version__}\n\n{report}")
        return
    items = training_subset(split_items(dataset.items, seed=0).train, args.batch_size * (args.warmup + args.steps), seed=0)
    fmt = PromptFormatter(tokenizer)
    # One untimed run first: lazy imports and first-touch allocations would otherwise count against
    # whichever configuration happens to run first.
    sizes = dict(batch_size=args.batch_size, warmup=args.warmup)
    measure("sft", next(iter(ADAPTERS)), training_rows("sft", items, fmt), **sizes, steps=1)
    results = [measure(method, adapter, training_rows(method, items, fmt), **sizes, steps=args.steps)
               for method in ("sft", "dpo") for adapter in ADAPTERS]
    print(f"\nSmolLM2-135M-Instruct, batch {args.batch_size}, steer positions={args.positions}, {args.threads} thread(s), "
          f"median of {args.steps} steps after {args.warmup} warm-up steps, torch {torch.__version__}\n")
    print(table(results))


if __name__ == "__main__":
    main()

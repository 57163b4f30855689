"""Study scoring cost: the site-cache engine against the plain path, in one process.

    OMP_NUM_THREADS=1 python scripts/bench_study.py [--quick] [--threads 1] [--rounds 3] [--positions all]
    OMP_NUM_THREADS=1 python scripts/bench_study.py --trained [--train-items 8] [--epochs 2] [--rounds 3] [--positions all]
    OMP_NUM_THREADS=1 python scripts/bench_study.py --kl [--rounds 3]

SmolLM2-135M-Instruct on the bundled long-prompt set `dialogues` (prompts 150–178 tokens, replies
30–56). Two measurements, each a median over `--rounds` rounds, fast and plain timed in turn:

(a) sweep: every (layer, multiplier) candidate scored on held-out items. Plain = one hooked full
    forward per configuration (the vector attached as a steer adapter, `completion_logprobs`).
    Fast = `site_logprobs`: one recorded base pass per batch, each candidate from its block up.
(b) point: an extracted-vector study point = validation candidates (the study's default layers ×
    multipliers) + the chosen vector on the test items. Plain = the above plain path for both;
    fast = the study's path now: the base model's passes over the validation and the test items
    recorded once per study (`record_base`, kept in the study context for every point; timed
    apart as `records`, a one-off cost) and, per point, the candidates replayed from the
    validation record and the chosen one from the test record. It prints the per-point ratio
    (what every point after the first costs) and the ratio with the records' cost included
    (a study of one point).

`--quick` shrinks everything to finish in under 5 minutes on a busy 2-core machine: the sweep to
every 10th layer × 5 multipliers on 1 item, the point to 3 candidates on 2 validation and 4 test
items (about the full point's ratio of candidate to test work). The full run is all 30 layers ×
5 multipliers on 128 items, and 9 candidates on 16 validation + 100 test items. The last line reads
`sweep_speedup=X point_speedup=Y` (Y: per point, records shared). Both checks also print the
largest difference in log-probs. `--point-only` skips the sweep (the full one takes hours on the
plain side) and ends with `point_speedup=Y`.

`--trained` times a trained-vector point instead (steer-dpo, steering `--positions`): a vector
trained with DPO at block 14 on `--train-items` items for `--epochs` epochs (batch 4), its
multiplier chosen among the study's default [1, 2] on 16 validation items, the chosen one scored
on `--test-items` test items. Plain =
the path before: every block run in every training pass, TRL's LM head scoring every position,
reference log-probs recomputed every step and each multiplier scored attached; fast = the study's
path now: the blocks below block 14 run once per row (`BelowSiteCache`), the LM head on labelled
positions only (`fused_head_on_labels_only`), references precomputed once
(`steerft.training.reference_defaults`), the multipliers replayed from block 14
(`select.multipliers_on`) and the chosen one on test (`evaluate.replayed_preference`), both from
the base records a study keeps for all its points (built once, timed apart as `records`, as for
the extracted-vector point). It prints the per-point ratio (what a point costs in a study whose
records exist) and the ratio with the records' cost included (a study of this one point). Both
sides score multiplier 0 ("don't steer") too, and neither measures side effects (no caps are set).
Its last line reads `trained_point_speedup=Z` (Z: per point, records shared).

`--profile-point` runs the `none` and a `caa` point of a real study (`dialogues`, n = 8, layers
{6, 12, 18} x multipliers {1, 2}, 16 validation and 100 test items, judge off) and prints, per
point, where its process CPU time went (cProfile, cumulative seconds of the study's functions).

`--kl` times one point's KL to the base model on the study's 16 neutral prompts along the base's
16-token continuations, for a steered model. Plain = the base and the method each run in full
forwards, logits at every position, in batches of the base rows; fast = the study's path now: the
base side computed once per study (`base_log_distributions`, not timed: it is shared by every
point) and the method's side from one prompt pass with logits only at the continuation positions.
Its last line reads `kl_speedup=W`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from types import SimpleNamespace
from unittest import mock

import torch

from steerft.batching import encode
from steerft.data import PromptFormatter, load_behaviour, load_texts
from steerft.metrics import kl_to_base, preference, reference_continuations
from steerft.metrics.side_effects import base_log_distributions
from steerft.metrics.logprobs import completion_logprobs
from steerft.metrics.site_cache import Steering, record_base, site_logprobs
from steerft.models import load_model
from steerft.study import select
from steerft.study.context import StudyContext, StudyData, base_record
from steerft.study.evaluate import replayed_preference
from steerft.study.scorable import Scorable, steered
from steerft.training import fit, training_rows
from steerft.tuner import SteerConfig

TRAINED_LAYER = 14
TRAINED_MULTIPLIERS = [1.0, 2.0]


def plain_logprobs(model, tokenizer, pairs, steering: Steering, batch_size: int) -> torch.Tensor:
    """Both completions of every pair with the vector attached: the path before the engine."""
    prompts = [p.prompt for p in pairs]
    completions = [p.positive for p in pairs] + [p.negative for p in pairs]
    with steered(model, {steering.layer: steering.vector}, steering.positions) as peft_model:
        with peft_model.using_multiplier(steering.multiplier):
            return completion_logprobs(peft_model, tokenizer, prompts + prompts, completions, batch_size=batch_size)


def rows_of(tokenizer, pairs):
    return [encode(tokenizer, p.prompt, p.positive) for p in pairs] + \
           [encode(tokenizer, p.prompt, p.negative) for p in pairs]


def timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def margins(logprobs: torch.Tensor) -> torch.Tensor:
    n = logprobs.shape[-1] // 2
    return logprobs[..., :n] - logprobs[..., n:]


def compare(name: str, rounds: int, plain, fast) -> tuple[float, float]:
    """Median seconds of `plain` and `fast`, run in turn `rounds` times."""
    plain_times, fast_times, diff = [], [], 0.0
    for _ in range(rounds):
        t_plain, want = timed(plain)
        t_fast, got = timed(fast)
        plain_times.append(t_plain)
        fast_times.append(t_fast)
        diff = max(diff, (torch.as_tensor(got) - torch.as_tensor(want)).abs().max().item())
    p, f = statistics.median(plain_times), statistics.median(fast_times)
    print(f"{name}: plain {p:.1f} s ({', '.join(f'{t:.1f}' for t in plain_times)}), "
          f"fast {f:.1f} s ({', '.join(f'{t:.1f}' for t in fast_times)}), speedup {p / f:.2f}x, "
          f"max |diff| {diff:.2e}", flush=True)
    return p, f


def trained_point(ctx: StudyContext, *, fast: bool, epochs: int) -> torch.Tensor:
    """Train a steer-dpo vector on `ctx`'s training items, choose its multiplier on validation, score the
    test items: the margins.

    The fast path is a study's: validation and test replayed from the base records kept in `ctx`
    (already there: a point of a study that has built them; or built here: a study of this one point)."""
    model, tokenizer, positions = ctx.model, ctx.tokenizer, ctx.config.positions
    fmt = PromptFormatter(tokenizer)
    test_pairs = Scorable(model, fmt).pairs(ctx.data.test)
    every_position = contextlib.nullcontext() if fast else mock.patch(
        "steerft.training.fused_head_on_labels_only", contextlib.nullcontext)  # TRL's own CPU head
    with tempfile.TemporaryDirectory() as scratch, every_position:
        trained = fit(copy.deepcopy(model), tokenizer, training_rows("dpo", ctx.data.train, fmt), method="dpo",
                      peft_config=SteerConfig(layers=[TRAINED_LAYER], positions=positions), cache_below_site=fast,
                      args=dict(output_dir=scratch, num_train_epochs=epochs, per_device_train_batch_size=4, seed=0,
                                disable_tqdm=True, logging_steps=1000, precompute_ref_log_probs=fast)).eval()
    if fast:
        candidates = select.multipliers_on(ctx, trained, fmt, TRAINED_LAYER, TRAINED_MULTIPLIERS)
    else:
        candidates = []
        for multiplier in select.with_zero(TRAINED_MULTIPLIERS):  # "don't steer" competes, as in the study
            with trained.using_multiplier(multiplier):
                accuracy, margin = select.score(ctx, Scorable(trained, fmt))
            candidates.append(select.Candidate(TRAINED_LAYER, multiplier, accuracy, margin))
    best = max(candidates, key=lambda c: c.val_mean_margin)
    with trained.using_multiplier(best.multiplier):
        replayed = replayed_preference(ctx, trained, "test", test_pairs) if fast else None
        test = (replayed or preference(trained, tokenizer, test_pairs, batch_size=ctx.config.eval.batch_size)).margins
    return torch.tensor([c.val_mean_margin for c in candidates] + test.tolist())


def trained_study(model, tokenizer, train_items, val_items, test_items, *, positions: str,
                  batch_size: int) -> StudyContext:
    """A study context for the trained point: its data, the trained layer, no side-effect caps."""
    config = SimpleNamespace(positions=positions, select_caps={}, eval=SimpleNamespace(batch_size=batch_size))
    return StudyContext(config, model, tokenizer, StudyData(train_items, val_items, test_items, None), [], [], [], [],
                        [TRAINED_LAYER], [TRAINED_LAYER])


def with_records(ctx: StudyContext) -> StudyContext:
    """`ctx` with the validation and test records a study keeps for every point (built here)."""
    for split in ("val", "test"):
        base_record(ctx, split)
    return ctx


def plain_kl(model, tokenizer, prompts, continuations, batch_size: int) -> float:
    """KL(base || steered) with full forwards of both, every position's logits (the path before the engine)."""
    from steerft.batching import batches
    from steerft.metrics._forward import inference, log_distributions

    rows = [encode(tokenizer, p, c) for p, c in zip(prompts, continuations)]
    per_item = torch.zeros(len(rows), dtype=torch.float64)
    with inference(model):
        for batch in batches(rows, batch_size, tokenizer.pad_token_id):
            with model.disable_adapter():
                base, in_batch = log_distributions(model, batch)
            method, _ = log_distributions(model, batch)
            base, method = base.double(), method.double()
            kl = (base.exp() * (base - method)).sum(-1)
            item_kl = torch.zeros(len(batch.index), dtype=torch.float64).index_add_(0, in_batch, kl)
            per_item[batch.index] = item_kl / torch.bincount(in_batch, minlength=len(batch.index))
    return per_item.mean().item()


PROFILED = ("pair_activations", "choose_steering", "_replayed", "_side_effects", "_replayed_side_effects", "measure",
            "preference", "replayed_preference", "kl_to_base", "study_kl", "study_cross_entropy", "reply_cross_entropy",
            "generate_samples", "base_record", "base_preference", "base_log_distributions")


def profile_point() -> None:
    """The `none` and a `caa` point of a real study, profiled on process CPU time: where a point's time goes."""
    import cProfile
    import pstats
    from pathlib import Path

    from steerft.study import runner
    from steerft.study.config import EvalSettings, JudgeSettings, StudyConfig
    from steerft.study.context import load_data
    from steerft.study.points import Point

    with tempfile.TemporaryDirectory() as out:
        config = StudyConfig(model="smollm2-135m-instruct", dataset="dialogues", methods=["none", "caa"], n=[8],
                             seeds=[0], val_frac=0.05, test_frac=0.32,  # splits of 16 and 102 of the 320 items
                             layers=[6, 12, 18], multipliers=[1.0, 2.0], judge=JudgeSettings(kind="none"),
                             eval=EvalSettings(test_items=100, val_items=16), wandb=False, threads=1, output_dir=out)
        ctx = runner._context(config, load_data(config), Path(out))
        for point in (Point("none"), Point("caa", 8, 0)):
            profile = cProfile.Profile(time.process_time)
            wall, cpu = time.perf_counter(), time.process_time()
            record = profile.runcall(runner.compute_point, ctx, point)
            print(f"{point.key}: cpu {time.process_time() - cpu:.1f} s, wall {time.perf_counter() - wall:.1f} s, "
                  f"choice L{record['choice'].get('layer')} x{record['choice'].get('multiplier')}", flush=True)
            for (path, line, name), (_, calls, _, cumulative, _) in sorted(
                    pstats.Stats(profile).stats.items(), key=lambda item: -item[1][3]):
                if name in PROFILED and "steerft" in path:
                    print(f"  {cumulative:7.1f} s  {calls:3d} calls  {name} ({path.split('steerft/')[-1]}:{line})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, every 10th layer (under 5 minutes)")
    parser.add_argument("--point-only", action="store_true", help="time the point, not the sweep")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--positions", default="all", help="steered tokens: all (the study default) or completion")
    parser.add_argument("--kl", action="store_true", help="time one point's KL to the base instead (see above)")
    parser.add_argument("--trained", action="store_true", help="time a steer-dpo point instead (see above)")
    parser.add_argument("--train-items", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--test-items", type=int, default=16, help="--trained: test items scored")
    parser.add_argument("--profile-point", action="store_true", help="profile a real none + caa point (see above)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.profile_point:
        profile_point()
        return
    model, tokenizer = load_model("smollm2-135m-instruct")
    fmt = PromptFormatter(tokenizer)
    items = load_behaviour("dialogues").items
    if args.kl:
        prompts = [fmt.prompt(p) for p in load_texts("neutral_prompts", "prompt")[:16]]
        continuations = reference_continuations(model, tokenizer, prompts, max_new_tokens=16)
        vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        with steered(model, {14: 4 * vector / vector.norm()}, "all") as peft_model:
            with peft_model.disable_adapter():
                reference = base_log_distributions(peft_model, tokenizer, prompts, continuations,
                                                   batch_size=args.batch_size)
            speedup = compare(
                "kl", args.rounds, lambda: plain_kl(peft_model, tokenizer, prompts, continuations, args.batch_size),
                lambda: kl_to_base(peft_model, tokenizer, prompts, prompts, continuations,
                                   batch_size=args.batch_size, reference=reference))
        print(f"kl_speedup={speedup[0] / speedup[1]:.2f}")
        return
    if args.trained:
        train, val, test = items[-args.train_items:], items[:16], items[16: 16 + args.test_items]
        print(f"threads={args.threads} rounds={args.rounds} positions={args.positions} "
              f"steer-dpo at block {TRAINED_LAYER}: {len(train)} items x "
              f"{args.epochs} epochs, multipliers {TRAINED_MULTIPLIERS} on {len(val)} validation items, "
              f"{len(test)} test items", flush=True)
        study = lambda: trained_study(model, tokenizer, train, val, test,  # noqa: E731
                                      positions=args.positions, batch_size=args.batch_size)
        record_times = []
        for _ in range(args.rounds):
            seconds, recorded = timed(lambda: with_records(study()))
            record_times.append(seconds)
        kept = recorded.base_memo
        print(f"records (val + test, once per study): {statistics.median(record_times):.1f} s "
              f"({', '.join(f'{t:.1f}' for t in record_times)})", flush=True)

        def fast():  # a point of a study whose records exist: a fresh context holding only them
            ctx = study()
            ctx.base_memo.update(kept)
            return trained_point(ctx, fast=True, epochs=args.epochs)

        speedup = compare("trained point", args.rounds, lambda: trained_point(study(), fast=False, epochs=args.epochs),
                          fast)
        print(f"trained point per point (records shared): {speedup[0] / speedup[1]:.2f}x; a study of one point "
              f"(records included): {speedup[0] / (speedup[1] + statistics.median(record_times)):.2f}x")
        print(f"trained_point_speedup={speedup[0] / speedup[1]:.2f}")
        return
    sweep_items, val_items, test_items = (1, 2, 4) if args.quick else (128, 16, 100)
    n_layers = model.config.num_hidden_layers
    sweep_layers = list(range(4, n_layers, 10)) if args.quick else list(range(n_layers))
    multipliers = [-4.0, -2.0, 1.0, 2.0, 4.0]
    point_multipliers = [4.0] if args.quick else [2.0, 4.0, 8.0]
    generator = torch.Generator().manual_seed(0)
    vectors = {layer: torch.randn(model.config.hidden_size, generator=generator) for layer in range(n_layers)}
    scorable = Scorable(model, fmt)
    pad, bs, pos = tokenizer.pad_token_id, args.batch_size, args.positions
    print(f"threads={args.threads} rounds={args.rounds} positions={pos} batch_size={bs} "
          f"sweep: {len(sweep_layers)} layers x {len(multipliers)} multipliers on {sweep_items} items; "
          f"point: layers [8, 14, 20] x {point_multipliers} on {val_items} validation items + {test_items} test items",
          flush=True)

    sweep_pairs = scorable.pairs(items[-sweep_items:])
    grid = [Steering(layer, vectors[layer], m, pos) for layer in sweep_layers for m in multipliers]
    sweep = None if args.point_only else compare(
        "sweep", args.rounds,
        lambda: torch.stack([margins(plain_logprobs(model, tokenizer, sweep_pairs, s, bs)) for s in grid]),
        lambda: margins(site_logprobs(model, rows_of(tokenizer, sweep_pairs), grid, batch_size=bs, pad=pad)))

    val_pairs = scorable.pairs(items[:val_items])
    test_pairs = scorable.pairs(items[val_items: val_items + test_items])
    candidates = [Steering(layer, vectors[layer], m, pos) for layer in (8, 14, 20) for m in point_multipliers]

    def plain_point():
        val = [margins(plain_logprobs(model, tokenizer, val_pairs, s, bs)).mean().item() for s in candidates]
        best = candidates[max(range(len(candidates)), key=val.__getitem__)]
        return torch.tensor(val + margins(plain_logprobs(model, tokenizer, test_pairs, best, bs)).tolist())

    def records():
        return [record_base(model, rows_of(tokenizer, pairs), (8, 14, 20), prompt_cache=pos == "completion",
                            batch_size=bs, pad=pad) for pairs in (val_pairs, test_pairs)]

    record_times = []
    for _ in range(args.rounds):
        seconds, (val_record, test_record) = timed(records)
        record_times.append(seconds)
    print(f"records (val + test, once per study): {statistics.median(record_times):.1f} s "
          f"({', '.join(f'{t:.1f}' for t in record_times)}), {(val_record.nbytes + test_record.nbytes) / 2**20:.0f} MiB, "
          f"kept: {val_record.kept and test_record.kept}", flush=True)

    def fast_point():
        val = margins(val_record.logprobs(candidates)).mean(-1).tolist()
        best = candidates[max(range(len(candidates)), key=val.__getitem__)]
        return torch.tensor(val + margins(test_record.logprobs([best]))[0].tolist())

    point = compare("point", args.rounds, plain_point, fast_point)
    plain_s, fast_s = point
    print(f"point per point (records shared): {plain_s / fast_s:.2f}x; a study of one point (records included): "
          f"{plain_s / (fast_s + statistics.median(record_times)):.2f}x")
    print(("" if sweep is None else f"sweep_speedup={sweep[0] / sweep[1]:.2f} ") + f"point_speedup={plain_s / fast_s:.2f}")


if __name__ == "__main__":
    main()

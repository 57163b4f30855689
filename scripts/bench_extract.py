"""Benchmark: steering-vector extraction speed, steerft against steering-vectors and repeng.

All three tools run in this one process, on the same model, the same contrast pairs, the same
layer and the same torch thread count, one after another in each round (so machine noise hits
them alike). Each tool gets one warm-up call, then `--repeats` timed calls; the table shows the
median.

    python scripts/bench_extract.py --threads 2            # the table in docs/benchmarks.md
    python scripts/bench_extract.py --threads 2 --profile  # also time variants of steerft's path

What is compared:

* steerft: `pair_activations(..., reduce="last")` + `estimate("mean_diff", ...)`; it stops the
  forward pass after block `--layer` (early exit).
* steering-vectors: `train_steering_vector(..., aggregator=mean_aggregator())`, reading the last
  token of prompt + completion at decoder block `--layer` (its layer L is the output of block L,
  i.e. `hidden_states[L + 1]`, checked below). It runs the whole model.
* repeng: `ControlVector.train(..., hidden_layers=[layer])` also reads `hidden_states[L + 1]` at
  the last token, but fits PCA on the differences (a different method), runs the whole model
  with `output_hidden_states=True`; only its time is compared.

The comparison packages are optional and never installed by this script; see `_INSTALL`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

# Both pin old dependencies (steering-vectors: transformers<5, which a plain `pip install` would
# downgrade steerft's transformers to; repeng: numpy<2), so install them without dependencies,
# after scikit-learn, the one they import that steerft does not need.
_INSTALL = {
    "steering-vectors": "pip install scikit-learn && pip install --no-deps steering-vectors",
    "repeng": "pip install scikit-learn && pip install --no-deps repeng",
}


_NEEDS = {"steering-vectors": ("steering_vectors", "sklearn"), "repeng": ("repeng", "sklearn")}


def _available(tool: str) -> bool:
    missing = [m for m in _NEEDS[tool] if importlib.util.find_spec(m) is None]
    if not missing:
        return True
    print(f"[skip] {tool}: Python package(s) {', '.join(missing)} not installed. Install with:\n    {_INSTALL[tool]}",
          file=sys.stderr)
    return False


def _import_repeng():
    import numpy as np

    # repeng 0.4.0 annotates with np.float_, removed in NumPy 2; the alias is all it needs.
    if not hasattr(np, "float_"):
        np.float_ = np.float64
    import repeng

    return repeng


# ----------------------------------------------------------------------------- the three tools


def run_steerft(model, tokenizer, pairs, layer: int, batch_size: int) -> torch.Tensor:
    from steerft.extract import estimate, pair_activations

    acts = pair_activations(model, tokenizer, pairs, [layer], reduce="last", batch_size=batch_size)
    return estimate("mean_diff", *acts.at(layer)).vector


def run_steering_vectors(model, tokenizer, pairs, layer: int, batch_size: int) -> torch.Tensor:
    from steering_vectors import train_steering_vector
    from steering_vectors.aggregators import mean_aggregator

    # One string per side: steering-vectors tokenises prompt + completion jointly and reads
    # token -1 (the last completion token); `check_tokens` shows this is what steerft reads.
    samples = [(p.prompt + p.positive, p.prompt + p.negative) for p in pairs]
    vector = train_steering_vector(model, tokenizer, samples, layers=[layer], read_token_index=-1,
                                   aggregator=mean_aggregator(), batch_size=batch_size)
    return vector.layer_activations[layer]


def run_repeng(model, tokenizer, pairs, layer: int, batch_size: int):
    repeng = _import_repeng()
    dataset = [repeng.DatasetEntry(positive=p.prompt + p.positive, negative=p.prompt + p.negative) for p in pairs]
    with _quiet_tqdm():
        return repeng.ControlVector.train(model, tokenizer, dataset, hidden_layers=[layer], batch_size=batch_size)


@contextmanager
def _quiet_tqdm():
    """repeng shows progress bars unconditionally; keep the benchmark output readable."""
    import tqdm

    original = tqdm.tqdm.__init__

    def init(self, *args, **kwargs):
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    tqdm.tqdm.__init__ = init
    try:
        yield
    finally:
        tqdm.tqdm.__init__ = original


# ----------------------------------------------------------------------------- input checks


def check_tokens(tokenizer, pairs) -> int:
    """Rows where steerft's tokens (prompt and completion tokenised apart) differ from a joint
    tokenisation with the tokenizer's defaults (what steering-vectors and repeng feed)."""
    from steerft.batching import encode

    bad = 0
    for p in pairs:
        for completion in (p.positive, p.negative):
            bad += encode(tokenizer, p.prompt, completion).ids != tokenizer(p.prompt + completion)["input_ids"]
    return bad


@torch.no_grad()
def check_layer_convention(model, tokenizer, text: str, layer: int) -> dict[str, float]:
    """Max |difference| of each tool's read at the last token against hidden_states[layer + 1]."""
    from steering_vectors.record_activations import record_activations
    from steerft.extract import read_activations

    ids = tokenizer(text, return_tensors="pt")
    reference = model(**ids, output_hidden_states=True).hidden_states[layer + 1][0, -1]
    out = {}
    if importlib.util.find_spec("steering_vectors"):
        with record_activations(model, "decoder_block", layer_nums=[layer]) as record:
            model(**ids)
        out["steering-vectors"] = float((record[layer][0][0, -1] - reference).abs().max())
    cut = len(ids["input_ids"][0]) - 1  # split anywhere: steerft's "last" reads the last completion token
    prompt = tokenizer.decode(ids["input_ids"][0][:cut])
    completion = tokenizer.decode(ids["input_ids"][0][cut:])
    steerft_read = read_activations(model, tokenizer, [prompt], [completion], [layer], reduce="last")[layer][0]
    out["steerft"] = float((steerft_read - reference).abs().max())
    return out


def work_estimate(model, tokenizer, pairs, layer: int, batch_size: int) -> str:
    """Matmul work (parameters touched per padded token) of each tool, as a ceiling on speed-ups.

    steerft: blocks 0..layer on length-sorted batches; steering-vectors/repeng: every block and
    the LM head on batches in data order (positives, then negatives, for steering-vectors)."""
    from steerft.batching import encode

    per_block = sum(p.numel() for p in model.model.layers[0].parameters())
    head = model.lm_head.weight.numel()
    n_blocks = len(model.model.layers)
    lengths = ([len(encode(tokenizer, p.prompt, p.positive).ids) for p in pairs]
               + [len(encode(tokenizer, p.prompt, p.negative).ids) for p in pairs])

    def padded(lens):
        return sum(len(lens[i : i + batch_size]) * max(lens[i : i + batch_size]) for i in range(0, len(lens), batch_size))

    n = len(pairs)
    sv_lens = [x for i in range(0, n, batch_size) for x in lengths[i : i + batch_size] + lengths[n + i : n + i + batch_size]]
    ours = padded(sorted(lengths)) * per_block * (layer + 1)
    full = padded(sv_lens) * (per_block * n_blocks + head)
    return (f"work model: {per_block / 1e6:.2f} M params per block, LM head {head / 1e6:.1f} M (= {head / per_block:.1f} "
            f"blocks); padded tokens steerft {padded(sorted(lengths))} (sorted) vs {padded(sv_lens)} (data order) of "
            f"{sum(lengths)}; full forward / early exit = {full / ours:.2f}x the matmul work")


# ----------------------------------------------------------------------------- timing


def bench(tools: dict[str, Callable[[], object]], repeats: int):
    """One warm-up each, then `repeats` rounds; each round times every tool once, in turn.

    Returns wall-clock times, CPU times of this process (all threads; steadier than wall time
    when other jobs share the cores) and each tool's warm-up result."""
    times = {name: [] for name in tools}
    cpu = {name: [] for name in tools}
    results = {}
    for name, fn in tools.items():
        start = time.perf_counter()
        results[name] = fn()
        print(f"  warm-up {name}: {time.perf_counter() - start:.2f} s", flush=True)
    for r in range(repeats):
        for name, fn in tools.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s (cpu {cpu[n][-1]:.2f} s)" for n, t in times.items()),
              flush=True)
    return times, cpu, results


def table(times: dict[str, list[float]], cpu: dict[str, list[float]], reference: str, notes: dict[str, str]) -> str:
    ref, ref_cpu = statistics.median(times[reference]), statistics.median(cpu[reference])
    lines = ["| tool | median s | runs (s) | time / ref | median CPU s | CPU / ref | note |",
             "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
    for name, ts in times.items():
        med, med_cpu = statistics.median(ts), statistics.median(cpu[name])
        runs = ", ".join(f"{t:.2f}" for t in ts)
        lines.append(f"| {name} | {med:.2f} | {runs} | {med / ref:.2f}x | {med_cpu:.2f} | {med_cpu / ref_cpu:.2f}x "
                     f"| {notes.get(name, '')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- profile variants


class _Stop(Exception):
    pass


@contextmanager
def _read_block(model, layer: int, captured: dict):
    """Capture block `layer`'s output and stop the forward pass there."""

    def hook(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = model.model.layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def _extend(model, cache, mask: torch.Tensor, lengths: torch.Tensor, chunks: list[list[int]], pad_id: int):
    """Append one right-padded chunk of tokens per row to `cache` (up to the read block).

    `mask` (rows, past) marks the real tokens already in the cache (padding holes allowed);
    `lengths` counts them, so every new token gets its true position. Returns the new mask,
    lengths and the captured block output (rows, width, d)."""
    rows, width = len(chunks), max(len(c) for c in chunks)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    new = torch.zeros((rows, width), dtype=torch.long)
    for i, chunk in enumerate(chunks):
        ids[i, : len(chunk)] = torch.tensor(chunk)
        new[i, : len(chunk)] = 1
    positions = lengths.unsqueeze(1) + torch.arange(width)
    mask = torch.cat([mask, new], 1)
    captured = {}
    try:
        model.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    except _Stop:
        pass
    return mask, lengths + new.sum(1), captured


def shared_prompt_read(model, tokenizer, pairs, layer: int, pairs_per_batch: int, *, common_prefix: bool):
    """Prototype: run each prompt once and both completions on its KV cache (and, with
    `common_prefix`, the prefix every prompt shares once per batch). Returns (2n, d) like steerft:
    positives first, then negatives."""
    from transformers import DynamicCache

    from steerft.batching import text_ids

    prompts = [text_ids(tokenizer, p.prompt) for p in pairs]
    completions = [[tokenizer(c, add_special_tokens=False)["input_ids"] for c in (p.positive, p.negative)]
                   for p in pairs]
    shared = 0
    if common_prefix:
        shared = len(os.path.commonprefix(prompts))
        shared -= shared == min(len(p) for p in prompts)  # keep >= 1 prompt token per row
    n, pad_id = len(pairs), tokenizer.pad_token_id
    out = torch.empty(2 * n, model.config.hidden_size)
    order = sorted(range(n), key=lambda i: len(prompts[i]) + max(map(len, completions[i])))
    for start in range(0, n, pairs_per_batch):
        chunk = order[start : start + pairs_per_batch]
        b, cache = len(chunk), DynamicCache()
        mask, lengths = torch.zeros((1, 0), dtype=torch.long), torch.zeros(1, dtype=torch.long)
        holder: dict = {}
        with _read_block(model, layer, holder):
            if shared:
                mask, lengths, _ = _extend(model, cache, mask, lengths, [prompts[chunk[0]][:shared]], pad_id)
            cache.batch_repeat_interleave(b)
            mask, lengths = mask.expand(b, -1), lengths.expand(b)
            mask, lengths, _ = _extend(model, cache, mask, lengths, [prompts[i][shared:] for i in chunk], pad_id)
            cache.batch_repeat_interleave(2)
            mask, lengths = mask.repeat_interleave(2, 0), lengths.repeat_interleave(2)
            rows = [completions[i][side] for i in chunk for side in (0, 1)]
            _extend(model, cache, mask, lengths, rows, pad_id)
        hidden = holder["h"]
        last = torch.tensor([len(r) - 1 for r in rows])
        reads = hidden[torch.arange(2 * b), last].float()
        index = torch.tensor(chunk)
        out[index] = reads[0::2]
        out[index + n] = reads[1::2]
    return out


def profile_variants(model, tokenizer, pairs, layer: int, batch_size: int, repeats: int, full: bool):
    """Variants of steerft's read path, patched locally (steerft's files are not changed).
    Returns times and each variant's (2n, d) reads."""
    import steerft.extract.activations as acts_mod
    from steerft.batching import batches, encode
    from steerft.extract.activations import forward_to_sites, reduce_tokens

    prompts = [p.prompt for p in pairs] * 2
    completions = [p.positive for p in pairs] + [p.negative for p in pairs]
    rows = [encode(tokenizer, p, c) for p, c in zip(prompts, completions)]

    def read(bs: int, *, early_exit: bool = True, labels: bool = True, dtype=None):
        """steerft's _read_rows loop; optionally without `labels=`, without early exit, in `dtype`."""

        def fn():
            out = torch.empty(len(rows), model.config.hidden_size)
            for batch in batches(rows, bs, tokenizer.pad_token_id):
                if labels and early_exit:
                    captured = forward_to_sites(model, batch, [layer])
                else:
                    captured = {}

                    def hook(module, args, output):
                        captured[layer] = output[0] if isinstance(output, tuple) else output
                        if early_exit:
                            raise acts_mod._StopForward

                    handle = model.model.layers[layer].register_forward_hook(hook)
                    try:
                        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                            kwargs = dict(batch.model_inputs(), use_cache=False)
                            if labels:
                                kwargs["labels"] = batch.labels
                            model(**kwargs)
                    except acts_mod._StopForward:
                        pass
                    finally:
                        handle.remove()
                out[batch.index] = reduce_tokens(captured[layer], batch.completion_mask, "last").float()
            return out

        return fn

    def plain_loop():
        """Unsorted, HF-padded batches through model.model with a raising hook: no steerft code."""
        texts = [p + c for p, c in zip(prompts, completions)]
        holder: dict = {}
        with _read_block(model, layer, holder):
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True)
                try:
                    with torch.no_grad():
                        model.model(**enc, use_cache=False)
                except _Stop:
                    pass

    ref = f"steerft read, bs {batch_size}"
    variants = {ref: read(batch_size),
                f"tokenise only ({len(rows)} rows)": lambda: [encode(tokenizer, p, c) for p, c in zip(prompts, completions)],
                f"plain early-exit loop, bs {batch_size} unsorted": plain_loop,
                f"steerft read, bs {batch_size}, no labels=": read(batch_size, labels=False),
                f"steerft read, bs {batch_size}, bf16 autocast": read(batch_size, labels=False, dtype=torch.bfloat16)}
    if full:
        variants[f"steerft read, bs {batch_size}, no early exit"] = read(batch_size, early_exit=False)
    for bs in (8, 32, 64) if full else (64,):
        if bs != batch_size:
            variants[f"steerft read, bs {bs}"] = read(bs)
    half = max(1, batch_size // 2)
    if full:
        variants[f"shared prompt KV, {half} pairs/batch"] = lambda: shared_prompt_read(
            model, tokenizer, pairs, layer, half, common_prefix=False)
    variants[f"shared prompt KV + common prefix, {half} pairs/batch"] = lambda: shared_prompt_read(
        model, tokenizer, pairs, layer, half, common_prefix=True)
    if full:
        variants[f"shared prompt KV + common prefix, {batch_size} pairs/batch"] = lambda: shared_prompt_read(
            model, tokenizer, pairs, layer, batch_size, common_prefix=True)
    return bench(variants, repeats)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every tool (default 2)")
    parser.add_argument("--layer", type=int, default=12, help="decoder block whose output is read (default 12 of 30)")
    parser.add_argument("--pairs", type=int, default=256, help="contrast pairs from the sentiment behaviour (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool after one warm-up (default 3)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="sequences per forward pass, for all tools (steering-vectors: pairs per batch, "
                             "run as one positive and one negative pass of this size) (default 16)")
    parser.add_argument("--tools", default="steerft,steering-vectors,repeng",
                        help="comma-separated subset of steerft,steering-vectors,repeng")
    parser.add_argument("--profile", nargs="?", const="short", choices=("short", "full"),
                        help="also time variants of steerft's read path (short: 7 variants; full: 12)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.pairs < 1 or args.batch_size < 1:
        parser.error("--repeats, --pairs and --batch-size must be >= 1")

    torch.set_num_threads(args.threads)
    from steerft.data import PromptFormatter, contrast_pairs, load_behaviour
    from steerft.models import load_model

    model, tokenizer = load_model()
    n_blocks = model.config.num_hidden_layers
    if not 0 <= args.layer < n_blocks:
        parser.error(f"--layer must be in [0, {n_blocks})")
    items = load_behaviour("sentiment").items
    if len(items) < args.pairs:
        parser.error(f"the sentiment behaviour has {len(items)} items, fewer than --pairs {args.pairs}")
    pairs = contrast_pairs(items[: args.pairs], PromptFormatter(tokenizer))

    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in ("steerft", *_NEEDS)]
    if unknown:
        parser.error(f"unknown tools {unknown}")
    runners = {"steerft": run_steerft, "steering-vectors": run_steering_vectors, "repeng": run_repeng}
    tools = {name: (lambda fn=runners[name]: fn(model, tokenizer, pairs, args.layer, args.batch_size))
             for name in ["steerft", *[t for t in wanted if t != "steerft"]]
             if name == "steerft" or _available(name)}

    n_tokens = sum(len(tokenizer(p.prompt + c)["input_ids"]) for p in pairs for c in (p.positive, p.negative))
    print(f"# steerft extraction benchmark\n"
          f"model SmolLM2-135M-Instruct ({n_blocks} blocks, {model.dtype}), {len(pairs)} sentiment pairs "
          f"({2 * len(pairs)} sequences, {n_tokens} tokens), layer {args.layer}, batch size {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{_cpu_count()} CPUs visible")
    print(f"tokens steerft reads vs joint tokenisation (steering-vectors/repeng input): "
          f"{check_tokens(tokenizer, pairs)} of {2 * len(pairs)} rows differ; padding side {tokenizer.padding_side}, "
          f"BOS added by tokenizer: {tokenizer.bos_token_id in tokenizer('a')['input_ids']}")
    print(work_estimate(model, tokenizer, pairs, args.layer, args.batch_size))
    if "steering-vectors" in tools:
        conv = check_layer_convention(model, tokenizer, pairs[0].prompt + pairs[0].positive, args.layer)
        print("layer convention, max |read - hidden_states[layer + 1]| at the last token: "
              + ", ".join(f"{k} {v:.1e}" for k, v in conv.items()))

    times, cpu, results = bench(tools, args.repeats)
    if torch.get_num_threads() != args.threads:
        print(f"WARNING: torch threads changed to {torch.get_num_threads()} during the run")
    notes = {"steerft": "mean_diff, early exit after block L",
             "steering-vectors": "mean aggregator, full forward",
             "repeng": "PCA on differences (different method): time only, full forward + all hidden states"}
    print()
    print("(ref = steerft)")
    print(table(times, cpu, "steerft", notes))
    if "steering-vectors" in results:
        a, b = results["steerft"].double(), results["steering-vectors"].double()
        cos = float(a @ b / (a.norm() * b.norm()))
        print(f"\nmax |steerft - steering-vectors| over the {a.numel()} components of the mean-difference vector: "
              f"{float((a - b).abs().max()):.2e} (vector max |x| {float(a.abs().max()):.2f}, norm {float(a.norm()):.2f}, "
              f"cosine {cos:.8f})")
    if "repeng" in results:
        print("repeng: PCA direction (unit norm), not a mean difference; its vector is not compared.")
    for name in ("steering-vectors", "repeng"):
        if name in times:
            ratio = statistics.median(times[name]) / statistics.median(times["steerft"])
            cpu_ratio = statistics.median(cpu[name]) / statistics.median(cpu["steerft"])
            print(f"steerft vs {name}: {ratio:.2f}x faster in wall time ({'meets' if ratio >= 3 else 'misses'} "
                  f"the 3x target), {cpu_ratio:.2f}x in CPU time")

    if args.profile:
        print("\n## steerft path variants (reading activations only, no estimator)")
        ptimes, pcpu, reads = profile_variants(model, tokenizer, pairs, args.layer, args.batch_size, args.repeats,
                                              full=args.profile == "full")
        ref = f"steerft read, bs {args.batch_size}"
        n = len(pairs)
        ref_vec = (reads[ref][:n] - reads[ref][n:]).double().mean(0)
        notes = {}
        for name, acts in reads.items():
            if isinstance(acts, torch.Tensor):
                vec = (acts[:n] - acts[n:]).double().mean(0)
                notes[name] = (f"reads max diff {float((acts - reads[ref]).abs().max()):.1e}, "
                               f"vector max diff {float((vec - ref_vec).abs().max()):.1e}")
        print()
        print(f"(ref = {ref})")
        print(table(ptimes, pcpu, ref, notes))
    return 0


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    raise SystemExit(main())

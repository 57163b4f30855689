"""Generation speed: the bare model, an unmerged steer adapter, and the same adapter merged into the weights.

    OMP_NUM_THREADS=1 python scripts/bench_generate.py [--threads 1] [--rounds 3] [--tokens 32] [--prompts 8]

SmolLM2-135M-Instruct, greedy decoding of the bundled generation prompts through `generate_samples`
(length-sorted, left-padded batches) with a vector at block 14 of 30 (random, norm 4). The three
models run in turn in each round, in this one process; the script prints each one's median tokens/s
over `--rounds` rounds and its ratio to the bare model. Generated tokens are counted as
`--prompts` × `--tokens` (every row runs until the last one stops; `min_new_tokens` keeps them all
at the same length). The merged model must generate what the unmerged one does: the script checks
that their texts are identical.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from peft import get_peft_model

from steerft.adapter import fixed_vectors
from steerft.data import PromptFormatter, load_texts
from steerft.metrics import generate_samples
from steerft.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per prompt")
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bare, tokenizer = load_model("smollm2-135m-instruct")
    bare.generation_config.min_new_tokens = args.tokens
    fmt = PromptFormatter(tokenizer)
    prompts = [fmt.prompt(p) for p in load_texts("generation_prompts", "prompt")[: args.prompts]]
    vector = torch.randn(bare.config.hidden_size, generator=torch.Generator().manual_seed(0))
    vector = 4 * vector / vector.norm()
    steered = get_peft_model(copy.deepcopy(bare), fixed_vectors({14: vector}, 1.0, "all")).eval()
    merged = copy.deepcopy(steered).merge_and_unload().eval()
    models = {"bare": bare, "steer adapter (unmerged)": steered, "steer merged": merged}
    generate = lambda model: generate_samples(model, tokenizer, prompts, max_new_tokens=args.tokens,  # noqa: E731
                                              batch_size=args.prompts)
    for model in models.values():  # warm-up: first-call allocations count against nobody
        generate(model)
    times: dict[str, list[float]] = {name: [] for name in models}
    texts = {}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            texts[name] = generate(model)
            times[name].append(time.perf_counter() - start)
    tokens = args.prompts * args.tokens
    print(f"SmolLM2-135M-Instruct, {args.prompts} prompts x {args.tokens} new tokens in one batch, "
          f"{args.threads} thread(s), median of {args.rounds} rounds, torch {torch.__version__}")
    print("| model | tokens/s (median) | runs (s) | tokens/s ÷ bare |\n|---|---:|---|---:|")
    bare_rate = tokens / statistics.median(times["bare"])
    for name, runs in times.items():
        rate = tokens / statistics.median(runs)
        print(f"| {name} | {rate:.1f} | {', '.join(f'{t:.2f}' for t in runs)} | {rate / bare_rate:.3f} |")
    same = texts["steer adapter (unmerged)"] == texts["steer merged"]
    print(f"merged generates the unmerged adapter's texts: {same}; "
          f"steered differs from bare: {texts['bare'] != texts['steer adapter (unmerged)']}")


if __name__ == "__main__":
    main()

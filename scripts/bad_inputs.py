"""A campaign of bad inputs: each runs through the CLI (in this process) or the API and is classified.

    OMP_NUM_THREADS=1 python scripts/bad_inputs.py [--only WORD] [--verbose]

Outcomes: `clear` (refused with one line that names the expected key/value/file), `misleading`
(refused, but the line does not name it), `traceback` (an unexpected exception escaped), `silent`
(accepted although it should be refused, or a wrong result), `files left` (refused, but the run
wrote into its output folder), `timeout`, and `ok` for inputs that must be accepted. A tool for
finding rough edges, not a test: uses a tiny random model saved to a local folder (no hub).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import io
import json
import math
import os
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from steerft import cli  # noqa: E402
from steerft.jobs.extract import ExtractConfig  # noqa: E402
from steerft.jobs.train import TrainConfig  # noqa: E402
from steerft.jobs.truth import TruthConfig  # noqa: E402
from steerft.study import StudyConfig  # noqa: E402
from steerft.testing import tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60
CONFIGS = {"train": TrainConfig, "extract": ExtractConfig, "study": StudyConfig, "truth": TruthConfig}
# A value of the wrong type for each kind of field, by the field's annotation.
WRONG = {"int": "abc", "float": "abc", "bool": "maybe", "str": "[1,2]", "list": "[1,{a: b}]", "dict": "[1,2]"}
SKIP_FIELDS = {"fields", "trainer", "peft", "adapter", "train", "eval"}  # mappings/sections: covered by hand


@dataclasses.dataclass
class Case:
    name: str
    run: Callable[[Path], Any]  # gets a fresh scratch folder; raises, returns an exit code or a value
    expect: tuple[str, ...] = ()  # words the error line must contain; empty: the input must be accepted
    out: str | None = "out"  # output folder (inside the scratch folder) that a refusal must leave empty
    api: bool = False  # a library call: refusing means raising ValueError/OSError/TypeError with a clear message


class Timeout(Exception):
    pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run cases whose name contains this")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="steerft-bad-inputs-"))
    tiny = root / "tiny"
    model, tokenizer = tiny_model("llama", n_layers=24)  # every default layer of the configs exists
    model.save_pretrained(tiny)
    tokenizer.save_pretrained(tiny)
    cases = [c for c in all_cases(tiny, root) if not args.only or args.only in c.name]
    counts: Counter[str] = Counter()
    for i, case in enumerate(cases):
        scratch = root / f"case{i}"
        scratch.mkdir()
        outcome, detail, seconds = classify(case, scratch)
        counts[outcome] += 1
        if args.verbose or outcome not in ("clear", "ok"):
            print(f"{outcome:11s} {seconds:5.1f}s  {case.name}: {detail}", flush=True)
    print(f"\n{len(cases)} inputs: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    return 0 if set(counts) <= {"clear", "ok"} else 1


def classify(case: Case, scratch: Path) -> tuple[str, str, float]:
    stderr = io.StringIO()
    started = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT_S)
    cwd = os.getcwd()
    try:
        os.chdir(scratch)
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            result = case.run(scratch)
        error = None
    except Timeout:
        return "timeout", "", time.perf_counter() - started
    except SystemExit as exit_:
        result, error = exit_.code, None
    except BaseException as err:  # noqa: BLE001 - the point is to see what escapes
        result, error = None, err
    finally:
        signal.alarm(0)
        os.chdir(cwd)
    seconds = time.perf_counter() - started
    lines = [line for line in stderr.getvalue().splitlines() if line.strip() and _is_ours(line)]
    if error is not None:
        if case.api and isinstance(error, (ValueError, OSError, TypeError)):
            lines = [f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"]
        else:
            tb = "".join(traceback.format_exception_only(type(error), error)).strip().splitlines()[-1]
            return "traceback", tb[:300], seconds
    refused = error is not None or result == 2
    if not case.expect:
        return ("ok", "accepted", seconds) if not refused else ("misleading", " | ".join(lines)[:300], seconds)
    if not refused:
        return "silent", f"accepted (result {result!r})", seconds
    message = " | ".join(lines)
    if case.out and _has_files(scratch / case.out):
        return "files left", f"{sorted(p.name for p in (scratch / case.out).iterdir())} after: {message[:200]}", seconds
    missing = [word for word in case.expect if word.lower() not in message.lower()]
    if len(lines) != 1 or missing:
        return "misleading", f"lacks {missing}: {message[:300]}", seconds
    return "clear", message[:300], seconds


def _alarm(*_):
    raise Timeout


def _is_ours(line: str) -> bool:
    """Library noise (progress bars, warnings of transformers) is not the error line."""
    return line.startswith(("steerft ", "ConfigError", "BehaviourDataError")) or "Error" in line.split(":")[0]


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() and not p.name.startswith(".study.") for p in folder.rglob("*"))


# --------------------------------------------------------------------------- the inputs


def all_cases(tiny: Path, root: Path) -> list[Case]:
    return [*override_cases(tiny), *type_cases(tiny), *value_cases(tiny), *file_cases(tiny), *api_cases(tiny)]


def job(name: str, *overrides: str, config: str | None = None, tiny: Path | None = None) -> Callable[[Path], int]:
    """The CLI in this process, with a tiny model and the scratch output folder unless the case sets them."""
    def run(scratch: Path) -> int:
        argv = [name, *(["--config", config] if config else [])]
        keys = {o.split("=", 1)[0] for o in overrides}
        if tiny is not None and "model" not in keys:
            argv.append(f"model={tiny}")
        if "output_dir" not in keys:
            argv.append(f"output_dir={scratch / 'out'}")
        quiet = [] if name == "extract" or "wandb" in keys else ["wandb=false"]
        return cli.main([*argv, *overrides, *quiet])
    return run


def override_cases(tiny: Path) -> list[Case]:
    cases = []
    for name in CONFIGS:
        cases += [
            Case(f"{name} n=[1,4", job(name, "n=[1,4", tiny=tiny), ("n=[1,4", "YAML")),
            Case(f"{name} =5", job(name, "=5", tiny=tiny), ("=5", "key=value")),
            Case(f"{name} bare word", job(name, "layers", tiny=tiny), ("layers", "key=value")),
            Case(f"{name} unknown key", job(name, "lerning_rate=0.1", tiny=tiny), ("lerning_rate", "allowed keys")),
            Case(f"{name} unknown dotted", job(name, "foo.bar=1", tiny=tiny), ("foo",)),
            Case(f"{name} missing config", job(name, config="nope.yaml", tiny=tiny), ("nope.yaml", "does not exist")),
            Case(f"{name} section set as scalar then dotted", job(name, "seed=1", "seed.x=2", tiny=tiny), ("seed",)),
        ]
    return cases


def type_cases(tiny: Path) -> list[Case]:
    """A wrong-typed value for every plain field of every job config."""
    cases = []
    for name, config_class in CONFIGS.items():
        for f in dataclasses.fields(config_class):
            if f.name in SKIP_FIELDS:
                continue
            hint = str(f.type)
            kind = next((k for k in ("list", "dict", "bool", "float", "int", "str") if k in hint), None)
            if kind is None:
                continue
            value = WRONG[kind]
            cases.append(Case(f"{name} {f.name}={value} ({hint})", job(name, f"{f.name}={value}", tiny=tiny),
                              (f.name,)))
    return cases


def value_cases(tiny: Path) -> list[Case]:
    t = dict(tiny=tiny)
    return [
        Case("train seed=-1", job("train", "seed=-1", **t), ("seed=-1", ">= 0")),
        Case("train split_seed=-1", job("train", "split_seed=-1", **t), ("split_seed",)),
        Case("train n=0", job("train", "n=0", **t), ("n=0",)),
        Case("train n=-5", job("train", "n=-5", **t), ("n=-5",)),
        Case("train n too large", job("train", "n=100000", **t), ("n=100000",)),
        Case("train method=ppo", job("train", "method=ppo", **t), ("ppo", "sft")),
        Case("train adapter.kind=ia3x", job("train", "adapter.kind=ia3x", **t), ("ia3x", "steer")),
        Case("train adapter.layers=[99]", job("train", "adapter.layers=[99]", **t), ("99",)),
        Case("train adapter.positions=middle", job("train", "adapter.positions=middle", **t), ("middle",)),
        Case("train adapter.multiplier=.nan", job("train", "adapter.multiplier=.nan", **t), ("multiplier",)),
        Case("train adapter.lora_r=0", job("train", "adapter.kind=lora", "adapter.lora_r=0", **t), ("lora_r",)),
        Case("train adapter.peft bad type", job("train", "adapter.peft={peft_type: NOPE}", **t), ("NOPE",)),
        Case("train trainer.learning_rate=fast", job("train", "trainer.learning_rate=fast", **t), ("learning_rate",)),
        Case("train trainer.bogus=1", job("train", "trainer.bogus=1", **t), ("bogus",)),
        Case("train trainer.report_to=wandb", job("train", "trainer.report_to=wandb", **t), ("report_to", "wandb")),
        Case("train trainer.max_length=5", job("train", "n=2", "trainer.max_length=5", "trainer.max_steps=1", **t),
             ("max_length",), out=None),
        Case("train val_frac=1.5", job("train", "val_frac=1.5", **t), ("val_frac",)),
        Case("train fractions sum > 1", job("train", "val_frac=0.6", "test_frac=0.6", **t), ("frac",)),
        Case("train eval_items=-1", job("train", "eval_items=-1", **t), ("eval_items",)),
        Case("train threads=0", job("train", "threads=0", **t), ("threads",)),
        Case("train dataset unknown", job("train", "dataset=nope_behaviour", **t), ("nope_behaviour",)),
        Case("train model missing", job("train", "model=/nonexistent/model"), ("/nonexistent/model",)),
        Case("train --adapter lora keeps lora rate", _lora_rate, ()),
        Case("extract n=1", job("extract", "n=1", **t), ("n=1", "pca")),
        Case("extract n=-5", job("extract", "n=-5", **t), ("n=-5",)),
        Case("extract n=0", job("extract", "n=0", **t), ("n=0",)),
        Case("extract estimators=[mean_diff,cca]", job("extract", "estimators=[mean_diff,cca]", **t), ("cca", "ccs")),
        Case("extract estimators=[]", job("extract", "estimators=[]", **t), ("estimators",)),
        Case("extract reduce=max", job("extract", "reduce=max", **t), ("max", "last", "mean")),
        Case("extract layers=[99]", job("extract", "layers=[99]", "n=4", **t), ("99",)),
        Case("extract layers=[]", job("extract", "layers=[]", "n=4", **t), ("layers",)),
        Case("extract batch_size=0", job("extract", "batch_size=0", **t), ("batch_size",)),
        Case("extract seed=-1", job("extract", "seed=-1", **t), ("seed",)),
        Case("extract init adapter missing", job("train", "adapter.init=/no/such/vector", **t), ("/no/such/vector",)),
        Case("study n=[1,4", job("study", "n=[1,4", **t), ("n=[1,4",)),
        Case("study multipliers=[4,big]", job("study", "multipliers=[4,big]", **t), ("big", "number")),
        Case("study methods=[caa,bogus]", job("study", "methods=[caa,bogus]", **t), ("bogus", "allowed")),
        Case("study n=[]", job("study", "n=[]", **t), ("n",)),
        Case("study n=[0]", job("study", "n=[0]", **t), ("n=",)),
        Case("study seeds=[0,0]", job("study", "seeds=[0,0]", **t), ("seeds", "repeats")),
        Case("study seeds=[-1]", job("study", "seeds=[-1]", **t), ("seeds",)),
        Case("study layers=[99]", job("study", "layers=[99]", "methods=[caa]", "n=[2]", "seeds=[0]",
                                      "train.adapter.layers=[2]", **t), ("99",)),
        Case("study select_by=loss", job("study", "select_by=loss", **t), ("loss", "mean_margin")),
        Case("study positions=middle", job("study", "positions=middle", **t), ("middle",)),
        Case("study workers=0", job("study", "workers=0", **t), ("workers",)),
        Case("study eval.test_items=0", job("study", "eval.test_items=0", **t), ("test_items",)),
        Case("study train.learning_rates.lora_lr", job("study", "train.learning_rates={lora_lr: 0.1}", **t),
             ("lora_lr",)),
        Case("study train.adapter.kind=lora", job("study", "train.adapter.kind=lora", **t), ("train.adapter.kind",)),
        Case("study train.trainer.beta=high", job("study", "train.trainer.beta=high", **t), ("beta",)),
        Case("truth n=[1]", job("truth", "n=[1]", **t), ("n=",)),
        Case("truth estimators=[cca]", job("truth", "estimators=[cca]", **t), ("cca",)),
        Case("truth seeds=[-1]", job("truth", "seeds=[-1]", **t), ("seeds",)),
        Case("truth n too large", job("truth", "n=[2,100000]", **t), ("100000",)),
        Case("truth layers=[99]", job("truth", "layers=[99]", "n=[2]", "seeds=[0]", **t), ("99",)),
    ]


def _lora_rate(scratch: Path) -> None:
    """--adapter lora on the steer recipe must train at LoRA's rate (a silent wrong result otherwise)."""
    from steerft.jobs import train
    from steerft.runconfig import build

    args = cli.parse(["train", "--config", str(ROOT / "recipes/configs/sft_steer.yaml"), "--adapter", "lora"])
    resolved, *_ = train._resolve(build(TrainConfig, cli.config_data(args)))
    if resolved.trainer["learning_rate"] != 1e-3:
        raise SystemExit(f"silent: learning rate {resolved.trainer['learning_rate']}")


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


GOOD_ROW = {"question": "Is it good?", "answer_matching_behavior": "Yes", "answer_not_matching_behavior": "No"}


def _rows(n: int) -> str:
    return "".join(json.dumps({**GOOD_ROW, "question": f"Is thing {i} good?"}) + "\n" for i in range(n))


def dataset_case(label: str, content: bytes | str, suffix: str, expect: tuple[str, ...], tiny: Path,
                 name: str = "train") -> Case:
    def run(scratch: Path) -> int:
        path = _write(scratch / f"data{suffix}", content)
        sizes = {"train": ("n=2", "trainer.max_steps=1"), "extract": ("n=2",), "study": ("n=[2]",)}[name]
        return job(name, f"dataset={path}", *sizes, tiny=tiny)(scratch)
    return Case(f"{name} dataset {label}", run, expect)


def file_cases(tiny: Path) -> list[Case]:
    t = tiny
    cases = [
        dataset_case("non-UTF-8", b"\xff\xfe\xfa" + _rows(3).encode(), ".jsonl", ("UTF-8",), t),
        dataset_case("UTF-16", _rows(20).encode("utf-16"), ".jsonl", ("UTF-16",), t),
        dataset_case("not gzip", _rows(20).encode(), ".jsonl.gz", ("gzip",), t),
        dataset_case("truncated gzip", gzip.compress(_rows(40).encode())[:-30], ".jsonl.gz", ("gz",), t),
        dataset_case("bad JSON line", _rows(10) + "{oops\n", ".jsonl", ("line 11",), t),
        dataset_case("missing field", json.dumps({"question": "x"}) + "\n", ".jsonl", ("answer_matching_behavior",), t),
        dataset_case("empty", "", ".jsonl", ("empty",), t),
        dataset_case("list of numbers", "[1, 2, 3]", ".json", ("data.json",), t),
        dataset_case("csv suffix", "a,b\n1,2\n", ".csv", ("data.csv",), t),
        dataset_case("empty answers", json.dumps({**GOOD_ROW, "answer_matching_behavior": ""}) + "\n" + _rows(10),
                     ".jsonl", ("line 1",), t),
        dataset_case("same answers", json.dumps({**GOOD_ROW, "answer_not_matching_behavior": "Yes"}) + "\n"
                     + _rows(10), ".jsonl", ("line 1",), t),
        Case("train dataset too few rows", lambda scratch: job("train", f"dataset={_write(scratch / 'd.jsonl', _rows(3))}",
                                                               "n=50", tiny=t)(scratch), ("n=50",)),
        dataset_case("non-UTF-8 (extract)", b"\xff" + _rows(3).encode(), ".jsonl", ("UTF-8",), t, name="extract"),
        dataset_case("bad JSON (study)", "{oops\n" + _rows(10), ".jsonl", ("line 1",), t, name="study"),
        Case("config not YAML", _config_file("a: [1,\n", "train", t), ("not valid YAML",)),
        Case("config is a list", _config_file("- 1\n- 2\n", "train", t), ("mapping",)),
        Case("config binary", _config_file(b"\x00\xff\xfe\x00", "study", t), ("cfg.yaml",)),
        Case("config unknown key", _config_file("lerning_rate: 1\n", "extract", t), ("lerning_rate",)),
        Case("config wrong nested type", _config_file("adapter: 5\n", "train", t), ("adapter",)),
        Case("config trainer not a mapping", _config_file("trainer: [1]\n", "train", t), ("trainer",)),
    ]
    for name in CONFIGS:
        cases += [
            Case(f"{name} output_dir is a file", _output_file(name, t, below=False), ("is a file",), out=None),
            Case(f"{name} output_dir under a file", _output_file(name, t, below=True), ("is a file",), out=None),
        ]
    cases += [
        Case("study corrupt points.jsonl", _corrupt_points(t), ("points.jsonl, line 2",), out=None),
        Case("study points.jsonl record without key", _corrupt_points(t, '[1, 2]'), ("points.jsonl, line 2",),
             out=None),
        Case("study corrupt study.json", _corrupt_study_json(t), ("study.json",), out=None),
        Case("train init corrupt adapter_config", _bad_init(t, config="{oops"), ("adapter_config.json",)),
        Case("train init adapter_config a list", _bad_init(t, config="[1]"), ("adapter_config.json",)),
        Case("train init corrupt safetensors", _bad_init(t, weights=b"\x00" * 9), ("adapter_model.safetensors",)),
        Case("train init a LoRA adapter", _bad_init(t, config=json.dumps({"peft_type": "LORA"})), ("LORA",)),
        Case("train init vector of the wrong width", _wide_init(t), ("hidden size",)),
        Case("train finished run folder", _finished_run(t), ("finished run", "overwrite=true"), out=None),
        Case("train interrupted run folder", _interrupted_run(t), ("interrupted run", "resume=true"), out=None),
        Case("study folder in use", _study_in_use(t), ("in use by pid",), out=None),
        Case("study Ctrl-C", _interrupt("study"), ("interrupted; rerun the same command to resume",), out=None),
        Case("train Ctrl-C", _interrupt("train"), ("resume=true",), out=None),
    ]
    return cases


def _config_file(text: str | bytes, name: str, tiny: Path) -> Callable[[Path], int]:
    def run(scratch: Path) -> int:
        return job(name, config=str(_write(scratch / "cfg.yaml", text)), tiny=tiny)(scratch)
    return run


def _output_file(name: str, tiny: Path, below: bool) -> Callable[[Path], int]:
    def run(scratch: Path) -> int:
        blocker = _write(scratch / "blocker", "")
        return job(name, f"output_dir={blocker / 'x' if below else blocker}", tiny=tiny)(scratch)
    return run


def _corrupt_points(tiny: Path, line: str = "{broken") -> Callable[[Path], int]:
    def run(scratch: Path) -> int:
        _write(scratch / "out" / "points.jsonl", '{"key": "none|shared"}\n' + line + '\n{"key": "x"}\n')
        return job("study", tiny=tiny)(scratch)
    return run


def _corrupt_study_json(tiny: Path) -> Callable[[Path], int]:
    def run(scratch: Path) -> int:
        _write(scratch / "out" / "points.jsonl", '{"key": "none|shared"}\n')
        _write(scratch / "out" / "study.json", "{oops")
        return job("study", tiny=tiny)(scratch)
    return run


def _bad_init(tiny: Path, config: str = '{"peft_type": "STEER"}', weights: bytes = b"\x00") -> Callable[[Path], int]:
    def run(scratch: Path) -> int:
        _write(scratch / "vec" / "adapter_config.json", config)
        _write(scratch / "vec" / "adapter_model.safetensors", weights)
        return job("train", f"adapter.init={scratch / 'vec'}", "adapter.layers=[14]", tiny=tiny)(scratch)
    return run


def _wide_init(tiny: Path) -> Callable[[Path], int]:
    def run(scratch: Path) -> int:
        from safetensors.torch import save_file

        _write(scratch / "vec" / "adapter_config.json", '{"peft_type": "STEER", "multiplier": 1.0}')
        save_file({"base_model.model.model.layers.14.steer.vector.weight": torch.ones(7)},
                  scratch / "vec" / "adapter_model.safetensors")
        return job("train", f"adapter.init={scratch / 'vec'}", "adapter.layers=[14]", "n=2", tiny=tiny)(scratch)
    return run


def _finished_run(tiny: Path) -> Callable[[Path], int]:
    def run(scratch: Path) -> int:
        _write(scratch / "out" / "r" / "metrics.json", "{}")
        return job("train", "run_name=r", tiny=tiny)(scratch)
    return run


def _interrupted_run(tiny: Path) -> Callable[[Path], int]:
    def run(scratch: Path) -> int:
        _write(scratch / "out" / "r" / "checkpoint-3" / "trainer_state.json", "{}")
        return job("train", "run_name=r", tiny=tiny)(scratch)
    return run


def _study_in_use(tiny: Path) -> Callable[[Path], int]:
    def run(scratch: Path) -> int:
        from steerft.study import runner

        with runner._study_lock(scratch / "out"):
            return job("study", tiny=tiny)(scratch)
    return run


def _interrupt(name: str) -> Callable[[Path], int]:
    """A Ctrl-C while the job runs: the exit code 130 counts as a refusal with one line."""
    def run(scratch: Path) -> int:
        def interrupted(*args):
            raise KeyboardInterrupt

        real, cli.run_job = cli.run_job, interrupted
        try:
            return 2 if cli.main([name]) == 130 else 0
        finally:
            cli.run_job = real
    return run


def api_cases(tiny: Path) -> list[Case]:
    from peft import get_peft_model

    from steerft import SteerConfig
    from steerft.models import load_model

    def steered(scratch: Path):
        model, _ = load_model(str(tiny))
        return get_peft_model(model, SteerConfig(layers=[1]))

    def multiplier(value: Any) -> Callable[[Path], Any]:
        return lambda scratch: steered(scratch).set_multiplier(value)

    def saved_adapter(scratch: Path) -> Path:
        model = steered(scratch)
        model.save_pretrained(scratch / "adapter")
        return scratch / "adapter"

    def load_broken(damage: Callable[[Path], None]) -> Callable[[Path], Any]:
        def run(scratch: Path):
            folder = saved_adapter(scratch)
            damage(folder)
            return load_model(str(folder))
        return run

    def reload_keeps_vector(scratch: Path):
        model = steered(scratch)
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if "steer" in n).fill_(0.5)
        model.save_pretrained(scratch / "adapter")
        loaded, _ = load_model(str(scratch / "adapter"))
        vector = next(p for n, p in loaded.named_parameters() if "steer" in n)
        if not torch.allclose(vector, torch.full_like(vector, 0.5)):
            raise SystemExit("silent: the reloaded vector is not the saved one")

    cases = [
        Case("api set_multiplier(nan)", multiplier(math.nan), ("multiplier",), out=None),
        Case("api set_multiplier(inf)", multiplier(math.inf), ("multiplier",), out=None),
        Case("api set_multiplier(None)", multiplier(None), ("multiplier",), out=None),
        Case("api set_multiplier('2')", multiplier("2"), ("multiplier",), out=None),
        Case("api SteerConfig(layers=[])", lambda s: SteerConfig(layers=[]), ("layers",), out=None),
        Case("api SteerConfig(positions='mid')", lambda s: SteerConfig(layers=[1], positions="mid"), ("positions",),
             out=None),
        Case("api get_peft_model layers=[99]", lambda s: get_peft_model(load_model(str(tiny))[0],
                                                                     SteerConfig(layers=[99])), ("99",), out=None),
        Case("api load_model missing", lambda s: load_model("/no/such/model"), ("/no/such/model",), out=None),
        Case("api load_model bad dtype", lambda s: load_model(str(tiny), dtype="int3"), ("int3",), out=None),
        Case("api load_model adapter: reload keeps the vector", reload_keeps_vector, (), out=None),
        Case("api load_model adapter without tokenizer", load_broken(lambda f: None), (), out=None),
        Case("api load_model adapter corrupt config", load_broken(
            lambda f: (f / "adapter_config.json").write_text("{oops")), ("adapter_config.json",), out=None),
        Case("api load_model adapter truncated weights", load_broken(
            lambda f: (f / "adapter_model.safetensors").write_bytes(
                (f / "adapter_model.safetensors").read_bytes()[:40])), ("adapter_model.safetensors",), out=None),
        Case("api load_model adapter without base", load_broken(lambda f: (f / "adapter_config.json").write_text(
            json.dumps({**json.loads((f / "adapter_config.json").read_text()), "base_model_name_or_path": None}))),
            ("base_model_name_or_path",), out=None),
        Case("api load_model adapter with other layers", load_broken(lambda f: (f / "adapter_config.json").write_text(
            json.dumps({**json.loads((f / "adapter_config.json").read_text()), "layers": [2]}))), ("layers",),
            out=None),
    ]
    return [dataclasses.replace(case, api=True) for case in cases]


if __name__ == "__main__":
    sys.exit(main())

"""The docs run as written: every ```bash and ```python block of the user-facing READMEs is executed.

Blocks are discovered, so a new section is covered without touching this file. Python blocks run
for real (the README snippet on SmolLM2-135M-Instruct). Shell commands run in-process, in one
scratch folder where `recipes/` and `eval/` are visible (so relative paths, and one command's
outputs used by a later one, work as for a user in the repository root), in file order, with
overrides appended that shrink them to a tiny 30-block model and a step or two (`SHRINK`). An
`accelerate launch` line runs the launched script with its arguments in this process; the
multi-process launch itself is tested in test_recipes_distributed.py. A block that cannot run
here is listed in `SKIP` with the reason.
"""

from __future__ import annotations

import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from steerft import cli
from steerft.testing import tiny_model

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "recipes/README.md", "eval/studies/README.md")
LANGUAGES = ("bash", "python")

# Commands (by their start) that are not run, and why. Each must match a command of the docs.
SKIP = {
    "make demo": "sets up .venv (network) and runs the default study, which eval/studies/README.md's "
                 "`steerft study --config eval/studies/quick.yaml` runs here",
    "make test": "runs this test suite",
}

# Appended to every command of a job: a tiny model, a step or two, no W&B. Runs of one recipe
# in several docs share a run name, so a later one replaces the earlier (overwrite=true).
_EVAL = ("eval.test_items=4", "eval.val_items=4", "eval.neutral_prompts=2", "eval.general_texts=2",
         "eval.generation_prompts=1", "eval.generation_tokens=2", "eval.reference_tokens=2")
SHRINK = {
    "extract": ("n=8", "batch_size=8", "progress=false", "threads=1"),
    "train": ("n=4", "trainer.max_steps=1", "eval_items=2", "wandb=false", "overwrite=true", "threads=1"),
    "study": ("n=[2]", "seeds=[0]", "train.trainer.max_steps=1", "max_demonstrations=2", "wandb=false", "workers=1",
              "threads=1", *_EVAL),
    "truth": ("n=[2,4]", "seeds=[0]", "test_items=8", "wandb=false", "threads=1"),
}
INTEROP_COMMANDS = {"export", "import", "push"}  # steerft.interop: they take files and flags, not a config
RECIPE_JOBS = {"sft.py": "train", "dpo.py": "train", "extract.py": "extract", "study.py": "study"}


def blocks() -> list[tuple[str, int, str, str]]:
    """(doc, line, language, text) of every ```bash / ```python block, in file order."""
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
            if match.group(1) in LANGUAGES:
                found.append((doc, text[: match.start()].count("\n") + 1, match.group(1), match.group(2)))
    return found


def commands(text: str) -> list[str]:
    """The shell commands of a bash block: comments dropped, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [shlex.join(words) for words in lines if words]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A user's repository root: recipes/ and eval/ visible, outputs in a scratch folder; a tiny model."""
    folder = tmp_path_factory.mktemp("docs")
    for name in ("recipes", "eval"):
        (folder / name).symlink_to(ROOT / name)
    model, tokenizer = tiny_model("llama", n_layers=30)
    model.save_pretrained(folder / "tiny-model")
    tokenizer.save_pretrained(folder / "tiny-model")
    return folder


@pytest.fixture
def in_workdir(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(workdir))
    return workdir


def run_command(command: str, workdir: Path) -> None:
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # OMP_NUM_THREADS=1 ...: the test runs one thread
        words.pop(0)
    if words[:2] == ["accelerate", "launch"]:
        words = _launched(words[2:])
    tiny = f"model={workdir / 'tiny-model'}"
    if words[0] == "steerft" and words[1] in INTEROP_COMMANDS:  # file commands: the tiny model for --model
        words = [str(workdir / "tiny-model") if before == "--model" else word
                 for before, word in zip([None, *words], words)]
        assert cli.main(words[1:]) == 0, command
    elif words[0] == "steerft":
        job = words[1]
        assert cli.main([*words[1:], tiny, *SHRINK[job]]) == 0, command
    elif words[0] == "python" and words[1].startswith("recipes/"):
        job = RECIPE_JOBS[Path(words[1]).name]
        argv, sys.argv = sys.argv, [words[1], *words[2:], tiny, *SHRINK[job]]
        try:
            with pytest.raises(SystemExit) as ended:
                runpy.run_path(words[1], run_name="__main__")
        finally:
            sys.argv = argv
        assert ended.value.code == 0, command
    else:
        pytest.fail(f"no way to run {command!r}; teach test_docs.py or add it to SKIP with the reason")


def _launched(words: list[str]) -> list[str]:
    """`accelerate launch [options] script args` -> `python script args` (its --config_file must exist)."""
    options_with_values = {"--config_file", "--num_processes", "--num_machines", "--mixed_precision", "--main_process_port"}
    i = 0
    while words[i].startswith("--"):
        if words[i] == "--config_file":
            assert Path(words[i + 1]).is_file(), f"accelerate config {words[i + 1]} does not exist"
        i += 2 if words[i] in options_with_values else 1
    return ["python", *words[i:]]


CASES = [pytest.param(doc, line, language, text, id=f"{doc}:{line}") for doc, line, language, text in blocks()]


def test_every_doc_has_runnable_blocks_and_every_skip_is_used():
    assert {doc for doc, *_ in blocks()} == set(DOCS)
    every = [c for doc, _, language, text in blocks() if language == "bash" for c in commands(text)]
    for start in SKIP:
        assert any(c.startswith(start) for c in every), f"SKIP entry {start!r} matches no command any more"


@pytest.mark.parametrize("doc, line, language, text", CASES)
def test_doc_block_runs_as_written(doc, line, language, text, in_workdir):
    if language == "python":
        exec(compile(text, f"{doc}:{line}", "exec"), {"__name__": "__docs__"})
        return
    for command in commands(text):
        if not any(command.startswith(start) for start in SKIP):
            run_command(command, in_workdir)

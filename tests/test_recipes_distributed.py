"""The SFT recipe under `accelerate launch` with two CPU processes (DDP over gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from steerft.testing import tiny_model

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_sft_recipe_on_two_cpu_processes_saves_one_adapter(tmp_path):
    model, tokenizer = tiny_model()
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path),
           "PYTHONUNBUFFERED": "1"}
    command = [str(ACCELERATE), "launch", "--config_file", str(ROOT / "recipes/accelerate/cpu_2proc.yaml"),
               str(ROOT / "recipes/sft.py"), f"model={tmp_path / 'tiny'}", "adapter.layers=[2]", "n=8", "trainer.max_steps=2",
               "eval_items=2", f"output_dir={out}"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "world size 2" in result.stdout
    assert [p.name for p in out.iterdir()] == ["sft-steer-L2-n8-s0"]
    assert len(list(out.rglob("adapter_model.safetensors"))) == 1
    assert json.loads((out / "sft-steer-L2-n8-s0" / "metrics.json").read_text())["world_size"] == 2

"""Shared test settings: offline, one thread per process (CI has 2 cores), deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from steerft.testing import tiny_model  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny llama (4 blocks) and its tokenizer on disk, for configs that name `model: <dir>`."""
    path = tmp_path_factory.mktemp("tiny")
    model, tokenizer = tiny_model("llama", n_layers=4)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, writing into the test's own folder (jobs that log runs use it)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))

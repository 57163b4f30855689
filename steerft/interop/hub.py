"""Pushing an adapter folder to the Hugging Face Hub, as PEFT's `push_to_hub` does for a model in memory.

`upload_files` is the exact list that `push_adapter` sends, so what would be uploaded can be checked
without a network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .adapter import CONFIG_FILE, WEIGHTS_FILE, read_adapter
from .card import CARD_FILE, prepare_for_hub

RUN_FILES = ("metrics.json", "subset_ids.json", "config.yaml")


def upload_files(folder: str | Path) -> list[str]:
    """The files of `folder` that make up the shared adapter: weights, config, card and run records."""
    folder = Path(folder)
    return [name for name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, *RUN_FILES) if (folder / name).is_file()]


def push_adapter(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                 commit_message: str = "Upload steer adapter", api: Any = None, **card_info: Any) -> str:
    """Write the card (see `prepare_for_hub`), create the repo if needed and upload the folder.

    `api` defaults to `huggingface_hub.HfApi(token=token)`; returns the commit URL.
    """
    read_adapter(folder)  # a clear error before any network call
    prepare_for_hub(folder, repo_id=repo_id, **card_info)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=upload_files(folder),
                               commit_message=commit_message, repo_type="model")
    return str(getattr(commit, "commit_url", commit))

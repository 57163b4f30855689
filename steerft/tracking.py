"""Weights & Biases set-up that never hangs or fails for want of a network.

Training and the study runner log through W&B, but most runs of this project happen on machines
without network access or a W&B login. `wandb_mode()` decides once, before anything imports or
initialises W&B (TRL's `WandbCallback` included): a user who is logged in gets an online run, anyone
else an offline one under `./wandb` (or `$WANDB_DIR`), and an explicit `WANDB_MODE` always wins.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any

from .io import use_process_tempdir

INIT_TIMEOUT_S = 30.0  # an online init that cannot reach the server gives up after this, then goes offline

# `import wandb` (done by transformers and TRL even when tracking is off) makes temp folders that only
# its exit handlers remove; keep them in a folder of this process's own that a later run can sweep.
use_process_tempdir()


def logged_in() -> bool:
    """Whether W&B has an API key for the server it would use, found the way wandb finds it, offline.

    The key comes from WANDB_API_KEY, else the .netrc entry (``$NETRC`` or ``~/.netrc``) for the
    host in wandb's own settings (its built-in default, the ``wandb login --host`` settings file,
    WANDB_BASE_URL), else an api_key in those settings: the sources wandb itself reads, so a
    logged-in user is never sent offline because of a guessed host name.
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    if importlib.util.find_spec("wandb") is None:
        return False
    import wandb
    from wandb.sdk.lib import wbauth

    settings = wandb.Settings(silent=True)  # silent: loading the settings file is not news to the user
    # the user's settings file, where wandb's own set-up finds it (`wandb login --host` writes it)
    config_dir = os.path.expanduser(os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb")
    settings.settings_system = os.path.join(config_dir, "settings")
    settings.update_from_system_settings()
    settings.update_from_env_vars(dict(os.environ))
    try:
        return bool(wbauth.read_netrc_auth(host=settings.base_url) or settings.api_key)
    except Exception:  # wandb raises its AuthenticationError for a malformed key: not logged in
        return False


def wandb_mode() -> str:
    """The W&B mode to use: an explicit WANDB_MODE, else "online" when logged in, else "offline"."""
    explicit = os.environ.get("WANDB_MODE")
    if explicit:
        return explicit
    return "online" if logged_in() else "offline"


def configure(enabled: bool = True) -> str:
    """Fix the mode in the environment, where TRL's callback and any later `wandb.init` read it."""
    mode = wandb_mode() if enabled else "disabled"
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    return mode


def report_to(enabled: bool) -> list[str]:
    """`report_to=` for TRL/transformers configs; configures the mode first so the callback cannot hang.

    WANDB_MODE=disabled, or no wandb installed, means no callback at all (it would refuse to start).
    """
    if configure(enabled) == "disabled" or not _installed():
        return []
    return ["wandb"]


def _installed() -> bool:
    if importlib.util.find_spec("wandb") is None:
        warnings.warn("wandb is not installed, so this run is not tracked; `pip install wandb` to track it.",
                      stacklevel=3)
        return False
    return True


def _settings(mode: str) -> Any:
    import wandb

    return wandb.Settings(mode=mode, init_timeout=INIT_TIMEOUT_S, silent=True)


def init_run(
    project: str,
    name: str | None = None,
    group: str | None = None,
    config: Mapping[str, Any] | None = None,
    job_type: str | None = None,
    *,
    enabled: bool = True,
) -> Any | None:
    """Start a W&B run (None when disabled); TRL's callback logs into it instead of starting its own.

    An online init that fails (server unreachable, key rejected) is retried offline with a warning,
    so a run never dies because of tracking.
    """
    mode = configure(enabled)
    if mode == "disabled" or not _installed():
        return None
    import wandb

    # wandb remembers the first run's directory for the whole process; name it on every run.
    kwargs = dict(project=project, name=name, group=group, config=dict(config or {}), job_type=job_type,
                  reinit="finish_previous", dir=os.environ.get("WANDB_DIR") or None)
    try:
        return wandb.init(settings=_settings(mode), **kwargs)
    except Exception as err:  # wandb raises several types for network and auth failures
        if mode != "online":
            raise
        warnings.warn(f"W&B could not start an online run ({type(err).__name__}: {err}); logging offline instead. "
                      "Sync it later with `wandb sync`.", stacklevel=2)
        os.environ["WANDB_MODE"] = "offline"
        return wandb.init(settings=_settings("offline"), **kwargs)


def _active_run() -> Any | None:
    """The current run, without importing wandb when nothing has used it yet."""
    wandb = sys.modules.get("wandb")
    return None if wandb is None else wandb.run


def log_summary(values: Mapping[str, Any]) -> None:
    """Put final numbers (held-out accuracy, wall time) into the active run's summary, if any."""
    run = _active_run()
    if run is not None:
        run.summary.update(dict(values))


def finish() -> None:
    """Close the active run, if any (safe to call when W&B was never started)."""
    run = _active_run()
    if run is not None:
        run.finish()

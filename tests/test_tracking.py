"""steerft.tracking: "logged in" is decided by wandb's own key lookup, and killed runs leave no temp folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from steerft import tracking

REPO = Path(__file__).resolve().parents[1]
KEY = "k" * 40  # wandb checks the key's format, not its value, before any network use


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of our own: no real ~/.netrc or ~/.config/wandb can leak in."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _write_netrc(home: Path, host: str) -> None:
    netrc = home / ".netrc"
    netrc.write_text(f"machine {host}\n  login user\n  password {KEY}\n")
    netrc.chmod(0o600)


def _wandb_default_host() -> str:
    from wandb.sdk.lib import urls

    return urlsplit(urls.DEFAULT_BASE_URL).netloc


def test_a_netrc_key_for_wandbs_own_default_host_means_online(home: Path) -> None:
    _write_netrc(home, _wandb_default_host())
    assert tracking.logged_in() and tracking.wandb_mode() == "online"


def test_a_key_for_another_host_is_not_a_login(home: Path) -> None:
    _write_netrc(home, "example.com")
    assert not tracking.logged_in() and tracking.wandb_mode() == "offline"


def test_wandb_base_url_selects_the_netrc_entry(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_netrc(home, "wandb.mycompany.example")
    assert not tracking.logged_in()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.mycompany.example")
    assert tracking.logged_in()


def test_a_wandb_login_host_settings_file_is_followed(home: Path) -> None:
    _write_netrc(home, "selfhosted.example")
    settings = home / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text("[default]\nbase_url = https://selfhosted.example\n")
    assert tracking.logged_in()


def test_tracking_sends_temp_files_to_the_process_own_folder() -> None:
    import tempfile

    from steerft.io import TEMP_PREFIX

    assert Path(tempfile.gettempdir()).name.startswith(TEMP_PREFIX)


# steerft/io.py is loaded by path: importing the steerft package would load torch and PEFT in each process.
_LOAD_IO = ("import importlib.util; "
            f"spec = importlib.util.spec_from_file_location('steerft_io', {str(REPO / 'steerft' / 'io.py')!r}); "
            "io = importlib.util.module_from_spec(spec); spec.loader.exec_module(io); io.use_process_tempdir()")


def test_sigkilled_process_leaves_no_wandb_temp_folders(tmp_path: Path) -> None:
    """`import wandb` makes tmp*wandb-* folders; after a SIGKILL the next process removes them."""
    system_tmp = tmp_path / "tmp"
    system_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(system_tmp), "WANDB_MODE": "disabled"}
    killed = _LOAD_IO + textwrap.dedent("""
        import os, signal, tempfile
        import wandb  # as transformers' is_wandb_available() does, even with tracking off
        assert any("wandb-" in name for name in os.listdir(tempfile.gettempdir()))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    run = subprocess.run([sys.executable, "-c", killed], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert [p for p in system_tmp.rglob("*") if "wandb-" in p.name], "the killed run leaves wandb's folders behind"
    assert not [p for p in system_tmp.iterdir() if "wandb-" in p.name], "but not loose in the system temp folder"
    clean = subprocess.run([sys.executable, "-c", _LOAD_IO + "\nimport wandb"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr
    assert not list(system_tmp.iterdir()), "the next run sweeps the dead one's folder and removes its own at exit"

"""`steerft export | import | push`: the interop commands, wired into `steerft.cli` by `add_commands`.

    steerft export gguf ADAPTER OUT.gguf [--layers 4 8]      llama.cpp control vector
    steerft export merged ADAPTER OUT_DIR [--model M]         plain transformers checkpoint
    steerft import gguf FILE.gguf OUT_DIR --model M           llama.cpp / repeng file -> steer adapter
    steerft push ADAPTER REPO_ID [--private] [--dry-run]      model card + upload to the Hub
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from steerft.models import AdapterLoadError, ModelNotAvailableError

Handler = Callable[[argparse.Namespace], str]


def add_commands(subparsers: Any) -> None:
    """Add the interop subcommands to the `steerft` parser's subparsers; each sets `handler`."""
    export = subparsers.add_parser("export", help="write a steer adapter in another format").add_subparsers(
        dest="format", required=True)
    gguf = _command(export, "gguf", "llama.cpp control vector (--control-vector-scaled FILE 1.0)", _export_gguf)
    gguf.add_argument("adapter", help="steer adapter folder")
    gguf.add_argument("out", help="control-vector .gguf to write")
    gguf.add_argument("--layers", type=int, nargs="+", help="only these blocks (default: all the adapter has)")
    gguf.add_argument("--model-hint", help="controlvector.model_hint (default: the adapter's base model)")
    merged = _command(export, "merged", "the adapter folded into the weights, as a plain transformers folder",
                      _export_merged)
    merged.add_argument("adapter", help="steer adapter folder")
    merged.add_argument("out", help="folder to write")
    merged.add_argument("--model", help="base model (default: the one the adapter records)")

    importing = subparsers.add_parser("import", help="make a steer adapter from another format").add_subparsers(
        dest="format", required=True)
    control = _command(importing, "gguf", "a llama.cpp control vector (also what repeng's export_gguf writes)",
                       _import_gguf)
    control.add_argument("file", help="control-vector .gguf")
    control.add_argument("out", help="adapter folder to write")
    control.add_argument("--model", required=True, help="the model the vector is for (built-in name, path or hub id)")
    control.add_argument("--multiplier", type=float, default=1.0, help="the adapter's multiplier (default 1)")

    push = _command(subparsers, "push", "write the model card and upload an adapter folder to the Hub", _push)
    push.add_argument("adapter", help="steer adapter folder")
    push.add_argument("repo_id", help="Hub repository, e.g. you/sentiment-steer")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--dry-run", action="store_true", help="write the card and list the files; upload nothing")


def _command(subparsers: Any, name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
    command = subparsers.add_parser(name, help=help_text, description=help_text)
    command.set_defaults(handler=handler)
    return command


def run(args: argparse.Namespace) -> int:
    """Run the chosen command; a problem with the input is one line on stderr and exit status 2."""
    from .adapter import InteropError  # torch loads with the command, not with the parser

    try:
        print(args.handler(args))
    except (InteropError, AdapterLoadError, ModelNotAvailableError, FileNotFoundError) as err:
        print(f"steerft {args.job}: {err}", file=sys.stderr)
        return 2
    return 0


def _export_gguf(args: argparse.Namespace) -> str:
    from .llamacpp import export_control_vector

    path = export_control_vector(args.adapter, args.out, layers=args.layers, model_hint=args.model_hint)
    return f"wrote {path}; use it with: llama-cli -m MODEL.gguf --control-vector-scaled {path} 1.0"


def _export_merged(args: argparse.Namespace) -> str:
    from .merged import export_merged

    return f"wrote {export_merged(args.adapter, args.out, model=args.model)} (loads with AutoModelForCausalLM)"


def _import_gguf(args: argparse.Namespace) -> str:
    from steerft.models import load_recorded_base
    from .llamacpp import import_control_vector

    model, _ = load_recorded_base(args.model)
    return f"wrote {import_control_vector(args.file, model, args.out, multiplier=args.multiplier)}"


def _push(args: argparse.Namespace) -> str:
    from .card import prepare_for_hub
    from .hub import push_adapter, upload_files

    if args.dry_run:
        prepare_for_hub(args.adapter, repo_id=args.repo_id)
        return f"would upload to {args.repo_id}: {', '.join(upload_files(args.adapter))}"
    return f"pushed: {push_adapter(args.adapter, args.repo_id, private=args.private or None)}"

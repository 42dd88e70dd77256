"""`lorakiln ui`: arguments and the launch policy of the web UI.

The policy is deliberately conservative because the UI can start trainings and write files
on the machine it runs on: it binds 127.0.0.1 unless `--listen` is given, it never asks gradio
for a public share link (no tunnel to the internet, whatever gradio's defaults become), and
`--auth` turns on a login. The policy lives in `launch_options` so tests check it without a
server. Importing this module does not import gradio (`lorakiln --help` stays instant).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lorakiln.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
LISTEN_HOST = "0.0.0.0"
DEFAULT_PORT = 7860


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", default=".", help="project folder: dataset in <project>/train, run TOML "
                   "<project>/run.toml, runs in <project>/.lorakiln-runs (created if missing; default: .)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this "
                   "machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--listen", action="store_true", help=f"bind {LISTEN_HOST}: reachable from the network "
                   "(use with --auth); overrides --host")
    p.add_argument("--auth", metavar="USER:PASS", help="require this login")


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """`user:pass` → (user, pass); the password may itself contain colons."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user.strip() or not password:
        raise ConfigError(f"--auth {value!r} is not USER:PASS (both parts non-empty), e.g. --auth me:s3cret")
    return user.strip(), password


def launch_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments for `gradio.Blocks.launch`: where to bind, login, and never a share link."""
    port = int(args.port)
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a TCP port (1–65535)")
    return {"server_name": LISTEN_HOST if args.listen else (args.host or DEFAULT_HOST),
            "server_port": port, "auth": parse_auth(args.auth), "share": False}


def run(args: argparse.Namespace) -> int:
    """Build the UI for `--project` and serve it until Ctrl-C."""
    options = launch_options(args)  # refuse a bad --auth before importing gradio
    project = Path(args.project).expanduser().resolve()
    project.mkdir(parents=True, exist_ok=True)
    from lorakiln.ui.app import build_app

    app = build_app(project)
    print(f"lorakiln ui: project {project}; http://{options['server_name']}:{options['server_port']} "
          "(Ctrl-C stops the UI, not a running training)"
          + ("" if options["auth"] else "; no login: add --auth USER:PASS before using --listen"), flush=True)
    app.launch(**options, quiet=True)  # quiet: gradio's banner suggests share=True, which we never do
    return 0

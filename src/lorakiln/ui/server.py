"""`lorakiln ui`: arguments and the launch policy of the web UI.

The UI can start trainings and write files on the machine it runs on, so the policy follows
Jupyter's and AUTOMATIC1111's security advice:

* it binds 127.0.0.1 unless `--listen` is given, and never asks gradio for a public share link;
* a server reachable from the network (`--listen`, or a `--host` that is not a loopback
  address) needs a login (`--auth`, or `--auth-file` to keep the password out of `ps`); running it without one takes the explicit
  `--insecure-no-auth`, which prints a red warning (A1111 likewise refuses extensions
  installs under `--listen` unless told otherwise);
* `--allow-pickle` (pickle checkpoints in runs) is refused together with such a server;
* requests whose `Host` header is not one of the server's names are refused (`hosts`);
* the folders it reads and writes are fixed here (`sandbox.Sandbox`), never by a request, and
  gradio's file server is limited to the project.

The policy lives in `launch_options` so tests check it without a server, and all of it is
checked before gradio is imported. Importing this module does not import gradio.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

from lorakiln.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
LISTEN_HOST = "0.0.0.0"
DEFAULT_PORT = 7860
_FOLDER_FLAGS = (("--models-dir", "base models, VAEs and caption models"), ("--vae-dir", "VAEs"),
                 ("--lora-dir", "LoRAs (Test and Tools tabs, network.network_weights)"),
                 ("--embeddings-dir", "textual-inversion embeddings"),
                 ("--data-dir", "photo folders to import, training images, sample-prompt files"))
RED, RESET = "\033[1;31m", "\033[0m"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", default=".", help="project folder, the only one the UI writes to: dataset in "
                   "<project>/train, run TOML <project>/run.toml, runs in <project>/.lorakiln-runs (created if "
                   "missing; default: .)")
    for flag, what in _FOLDER_FLAGS:
        p.add_argument(flag, action="append", default=[], metavar="DIR",
                       help=f"a folder the UI may read {what} from (repeatable; the project is always allowed)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this "
                   "machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--listen", action="store_true", help=f"bind {LISTEN_HOST}: reachable from the network "
                   "(requires --auth); overrides --host")
    p.add_argument("--auth", metavar="USER:PASS", help="require this login (visible to other users of this "
                   "machine in `ps`; prefer --auth-file)")
    p.add_argument("--auth-file", metavar="FILE", help="require a login from FILE: one USER:PASS per line "
                   "(blank lines and # comments ignored), as AUTOMATIC1111's --gradio-auth-path")
    p.add_argument("--insecure-no-auth", action="store_true", help="allow --listen without --auth: anyone who "
                   "can reach the port can start trainings and write files in the project")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name browsers use to reach the UI (repeatable); requests for other names are "
                   "refused (DNS rebinding)")
    p.add_argument("--allow-pickle", action="store_true", help="let runs started from the UI set "
                   "model.allow_pickle (pickles run code when loaded); refused with --listen")


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """`user:pass` → (user, pass); the password may itself contain colons."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user.strip() or not password:
        raise ConfigError(f"--auth {value!r} is not USER:PASS (both parts non-empty), e.g. --auth me:s3cret")
    return user.strip(), password


def read_auth_file(value: str | None) -> list[tuple[str, str]]:
    """The logins of `--auth-file`: one ``USER:PASS`` per line, so the password stays out of the
    process list (AUTOMATIC1111's `--gradio-auth-path` does the same for its UI)."""
    if value is None:
        return []
    from pathlib import Path

    path = Path(value).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--auth-file {path}: cannot be read ({getattr(err, 'strerror', None) or err}); "
                          "write one USER:PASS per line") from None
    logins = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            login = parse_auth(line.strip())
        except ConfigError:
            raise ConfigError(f"--auth-file {path}, line {number}: not USER:PASS (both parts non-empty)") from None
        if login:
            logins.append(login)
    if not logins:
        raise ConfigError(f"--auth-file {path} holds no USER:PASS line; add one, e.g. me:s3cret")
    return logins


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the UI on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def launch_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments for `gradio.Blocks.launch`: where to bind, login, and never a share
    link. Raises `ConfigError` for a network-reachable server without a login, or with pickles."""
    port = int(args.port)
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a TCP port (1–65535)")
    host = LISTEN_HOST if args.listen else (args.host or DEFAULT_HOST)
    logins = [a for a in [parse_auth(args.auth)] if a] + read_auth_file(getattr(args, "auth_file", None))
    auth = logins or None
    exposed = not is_loopback(host)
    if exposed and auth is None and not getattr(args, "insecure_no_auth", False):
        raise ConfigError(f"{'--listen' if args.listen else f'--host {host}'} makes the UI reachable from the "
                          "network, where anyone could start trainings and write files: add --auth USER:PASS "
                          "or --auth-file FILE (or, on a network you fully trust, --insecure-no-auth)")
    if exposed and getattr(args, "allow_pickle", False):
        raise ConfigError("--allow-pickle cannot be combined with a network-reachable UI (--listen or a "
                          "non-loopback --host): a pickle runs any code when loaded; drop one of the two")
    return {"server_name": host, "server_port": port, "auth": auth, "share": False}


def serve(box: Any, options: dict[str, Any], allowed_hosts: list[str], **extra: Any) -> Any:
    """Build and launch the UI for sandbox `box` with `launch_options`; returns the gradio app.

    Besides `options`: the `Host` check as FastAPI middleware, gradio's file server limited to the
    project (an empty list would fall back to $GRADIO_ALLOWED_PATHS), no SSR front server, no
    static-file worker processes and no MCP server — nothing that answers outside the middleware."""
    from lorakiln.ui import hosts, style
    from lorakiln.ui.app import build_app

    app = build_app(box)
    policy = hosts.HostPolicy(options["server_name"], allowed_hosts)
    app.launch(**options, app_kwargs={"middleware": hosts.middleware(policy)}, allowed_paths=[str(box.project)],
               ssr_mode=False, num_workers=0, mcp_server=False, css=style.CSS, head=style.HEAD, **extra)
    return app


def run(args: argparse.Namespace) -> int:
    """Check the policy, build the UI for `--project` and serve it until Ctrl-C."""
    options = launch_options(args)  # refuse before importing gradio
    from lorakiln.ui.sandbox import Sandbox

    box = Sandbox.from_args(args)
    if options["auth"] is None and not is_loopback(options["server_name"]):
        print(f"{RED}WARNING: --insecure-no-auth: the UI at {options['server_name']}:{options['server_port']} has "
              "no login; anyone who can reach it can start trainings and write files in "
              f"{box.project}{RESET}", file=sys.stderr, flush=True)
    print(f"lorakiln ui: project {box.project}; http://{options['server_name']}:{options['server_port']} "
          "(Ctrl-C stops the UI, not a running training)", flush=True)
    # quiet: gradio's banner suggests share=True, which we never do
    serve(box, options, list(args.allowed_host), quiet=True)
    return 0

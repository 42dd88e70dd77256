"""`lorakiln ui`'s launch policy (local by default, never a share link) and a real launch."""

from __future__ import annotations

import argparse
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lorakiln.errors import ConfigError
from lorakiln.ui.server import add_arguments, launch_options


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_launch_policy() -> None:
    assert launch_options(parse()) == {"server_name": "127.0.0.1", "server_port": 7860, "auth": None,
                                       "share": False}
    assert launch_options(parse("--listen", "--host", "10.0.0.2", "--auth", "a:b"))["server_name"] == "0.0.0.0"
    opts = launch_options(parse("--host", "10.0.0.2", "--port", "9000", "--insecure-no-auth"))
    assert opts["server_name"] == "10.0.0.2" and opts["auth"] is None
    opts = launch_options(parse("--auth", "me:s3:cret", "--listen"))
    assert opts["auth"] == [("me", "s3:cret")] and opts["share"] is False
    for bad in ("nocolon", ":pw", "me:", " :pw"):
        with pytest.raises(ConfigError, match="USER:PASS"):
            launch_options(parse("--auth", bad))
    with pytest.raises(ConfigError, match="port"):
        launch_options(parse("--port", "70000"))
    for exposed in (("--listen",), ("--host", "10.0.0.2"), ("--host", "0.0.0.0")):
        with pytest.raises(ConfigError, match="--auth USER:PASS"):
            launch_options(parse(*exposed))


def test_cli_refuses_a_malformed_auth(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from lorakiln.cli import main

    assert main(["ui", "--project", str(tmp_path), "--auth", "justaname"]) == 2
    assert "USER:PASS" in capsys.readouterr().err


def test_cli_parser_imports_neither_gradio_nor_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from lorakiln.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('gradio', 'torch', 'lorakiln.ui.app') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("listen", [False, True])
def test_real_launch_binds_as_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listen: bool) -> None:
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from lorakiln.ui.sandbox import Sandbox
    from lorakiln.ui.server import serve

    args = parse("--project", str(tmp_path / "proj"), "--port", str(free_port()),
                 *(["--listen", "--auth", "me:pw"] if listen else []))
    options = launch_options(args)
    app = serve(Sandbox.from_args(args), options, [], prevent_thread_lock=True, quiet=True)
    try:
        assert app.server_name == ("0.0.0.0" if listen else "127.0.0.1") and not app.share
        url = f"http://127.0.0.1:{options['server_port']}/"
        if listen:  # a login is required before anything else
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{url}gradio_api/info", timeout=30)
            assert refused.value.code == 401
            return
        with urllib.request.urlopen(url, timeout=30) as reply:
            assert reply.status == 200 and b"lorakiln" in reply.read()
        from gradio_client import Client  # the events are wired: handlers answer through gradio's own API

        client = Client(url, verbose=False)
        status, plot, *_ = client.predict("", api_name="/poll_view")
        assert status == "no runs yet" and plot["columns"] == ["step", "loss"]
        assert client.predict(api_name="/gallery") == []
    finally:
        app.close()
    assert (tmp_path / "proj").is_dir()


def test_auth_file_keeps_the_password_out_of_the_command_line(tmp_path: Path) -> None:
    logins = tmp_path / "logins.txt"
    logins.write_text("# who may log in\nme:s3:cret\n\n  you:pw  \n", encoding="utf-8")
    opts = launch_options(parse("--listen", "--auth-file", str(logins)))
    assert opts["auth"] == [("me", "s3:cret"), ("you", "pw")]
    logins.write_text("me:ok\njustaname\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2: not USER:PASS"):
        launch_options(parse("--auth-file", str(logins)))
    logins.write_text("# nobody\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds no USER:PASS"):
        launch_options(parse("--listen", "--auth-file", str(logins)))
    with pytest.raises(ConfigError, match="cannot be read"):
        launch_options(parse("--auth-file", str(tmp_path / "missing.txt")))

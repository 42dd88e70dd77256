"""The UI's trust model, tried as a hostile client would: a real server on a free port, driven
through gradio's HTTP API (`gradio_client` and raw requests), asked to use a project folder of
its own choosing, a model outside the server's folders, pickles, a convert onto a file outside
the project, an upload named ``../../x.png`` and a foreign ``Host`` header. Every attempt is
refused, and nothing outside the project changes (a sibling folder is snapshotted: files, sizes,
mtimes and contents). Also: ``lorakiln ui --listen`` without ``--auth`` exits before gradio loads.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from lorakiln.ui.forms import field_specs

KEYS = [s.key for s in field_specs()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Payload:
    """A pickle that runs a command when loaded, as a malicious `.ckpt` does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and folder under `root` except `skip`: size, mtime and content hash."""
    found: dict[str, tuple[int, int, str]] = {}
    for path in sorted(root.rglob("*")):
        if path == skip or skip in path.parents:
            continue
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
        found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, digest)
    return found


@dataclass
class Served:
    url: str
    port: int
    root: Path
    project: Path
    loras: Path
    outside: Path

    def unchanged_outside(self, before: dict) -> None:
        assert snapshot(self.root, self.project) == before
        assert not (self.root / "pwned").exists()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, epoch_loras: Path) -> Iterator[Served]:
    """`lorakiln ui --project root/project --lora-dir root/loras --allowed-host lorakiln.lan`, in
    this process; beside it `root/outside` holds a LoRA, photos and a pickle that touches
    `root/pwned` when loaded."""
    from lorakiln.ui import server
    from lorakiln.ui.sandbox import Sandbox

    root = tmp_path_factory.mktemp("trust")
    project, loras, outside = root / "project", root / "loras", root / "outside"
    (project / "train" / "5_zwx").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (60 + 100 * i, 120, 200)).save(project / "train" / "5_zwx" / f"z{i}.png")
    (project / "output").mkdir()
    shutil.copy(epoch_loras / "last.safetensors", project / "output" / "last.safetensors")
    loras.mkdir()
    shutil.copy(epoch_loras / "last.safetensors", loras / "style.safetensors")
    (outside / "photos").mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(outside / "photos" / "p0.png")
    shutil.copy(epoch_loras / "last.safetensors", outside / "victim.safetensors")
    (outside / "evil.ckpt").write_bytes(pickle.dumps(Payload(root / "pwned")))
    (project / "evil.ckpt").write_bytes(pickle.dumps(Payload(root / "pwned")))  # as if uploaded earlier
    (project / "link-out").symlink_to(outside)  # a symlink inside the project that leads out of it
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    p = argparse.ArgumentParser()
    server.add_arguments(p)
    port = free_port()
    args = p.parse_args(["--project", str(project), "--lora-dir", str(loras), "--port", str(port),
                         "--allowed-host", "lorakiln.lan"])
    app = server.serve(Sandbox.from_args(args), server.launch_options(args), args.allowed_host,
                       prevent_thread_lock=True, quiet=True)
    try:
        yield Served(f"http://127.0.0.1:{port}/", port, root, project, loras, outside)
    finally:
        app.close()


def client(served: Served):  # noqa: ANN201 - gradio_client's type stays out of the import list
    from gradio_client import Client

    return Client(served.url, verbose=False)


def raw_call(served: Served, api: str, data: list, host: str | None = None) -> tuple[str, object]:
    """POST /gradio_api/call/<api> then read its result stream: (event, data)."""
    req = urllib.request.Request(f"{served.url}gradio_api/call/{api}", data=json.dumps({"data": data}).encode(),
                                 headers={"content-type": "application/json", **({"Host": host} if host else {})})
    with urllib.request.urlopen(req, timeout=60) as reply:
        event_id = json.load(reply)["event_id"]
    with urllib.request.urlopen(f"{served.url}gradio_api/call/{api}/{event_id}", timeout=120) as reply:
        text = reply.read().decode()
    event = [ln.split(": ", 1)[1] for ln in text.splitlines() if ln.startswith("event: ")][-1]
    payload = [ln.split(": ", 1)[1] for ln in text.splitlines() if ln.startswith("data: ")][-1]
    return event, json.loads(payload)


def test_the_api_has_no_project_folder_and_ignores_one(served: Served) -> None:
    before = snapshot(served.root, served.project)
    api = client(served).view_api(return_format="dict", print_info=False)["named_endpoints"]
    labels = {p.get("label") for ep in api.values() for p in ep["parameters"]}
    assert "project folder" not in labels and "model.allow_pickle" not in labels
    # a project folder sent anyway is not an input: the gallery is still the server's project
    event, (items, _) = raw_call(served, "gallery", [str(served.outside)])
    assert event == "complete" and sorted(i["caption"].split(":")[0] for i in items) == ["z0.png", "z1.png"]
    for source in (str(served.outside / "photos"), "../outside/photos", "link-out/photos"):
        event, (msg,) = raw_call(served, "import_from_path", [source, "zwx", "", "1"])
        assert msg.startswith("error") and "outside the folders this UI may read" in msg, msg
    for toml in ("../outside/run.toml", str(served.outside / "run.toml"), "link-out/run.toml",
                 ".lorakiln-runs/queue.toml", "train/5_zwx/z0.png"):
        _, (_, msg, *_components) = raw_call(served, "load_form", [toml])
        assert msg.startswith("error"), (toml, msg)
    served.unchanged_outside(before)


def _form(c, toml: str = "run.toml") -> list:  # noqa: ANN001
    """The form's component values as the server loads them (gradio_client leaves out the State
    output: the session keeps it, as in a browser)."""
    msg, *components = c.predict(toml, api_name="/load_form")
    assert not msg.startswith("error") and len(components) == len(KEYS), msg
    return components


def test_paths_outside_the_allowed_folders_are_refused(served: Served) -> None:
    before = snapshot(served.root, served.project)
    c = client(served)
    components = _form(c)
    bad = {"model.pretrained_model": [str(served.outside / "victim.safetensors"), "../outside/victim.safetensors",
                                      "link-out/victim.safetensors"],
           "data.train_data_dir": [str(served.outside / "photos"), "link-out/photos"],
           "network.network_weights": [str(served.outside / "victim.safetensors")],
           "output.output_dir": ["../outside/out", str(served.outside), "link-out/out"]}
    for key, values in bad.items():
        for value in values:
            form = list(components)
            form[KEYS.index("model.pretrained_model")] = "tiny:sd1"
            form[KEYS.index(key)] = value
            for api in ("/save_form", "/total_steps"):
                msg = c.predict(*([1] if api == "/total_steps" else []), "run.toml", *form, api_name=api)
                assert msg.startswith("error") and key in msg and "outside" in msg, (key, value, msg)
            msg, errors = c.predict(1, "run.toml", *form, api_name="/start_run")
            assert msg.startswith("error") and key in msg and errors, msg
    assert not (served.project / "run.toml").exists() and not (served.project / ".lorakiln-runs").exists()
    form = list(components)  # the control: built-in model, dataset and output inside the project
    form[KEYS.index("model.pretrained_model")] = "tiny:sd1"
    assert c.predict("run.toml", *form, api_name="/save_form").startswith("saved")
    steps = c.predict(1, "run.toml", *form, api_name="/total_steps")
    assert "total steps" in steps, steps
    (served.project / "run.toml").unlink()
    served.unchanged_outside(before)


def test_pickles_cannot_be_switched_on_from_the_browser(served: Served) -> None:
    before = snapshot(served.root, served.project)
    c = client(served)
    body = ('[model]\npretrained_model = "evil.ckpt"\nallow_pickle = true\n[data]\ntrain_data_dir = "train"\n'
            '[output]\noutput_dir = "output"\n')
    (served.project / "pickle.toml").write_text(body, encoding="utf-8")
    msg, *components = c.predict("pickle.toml", api_name="/load_form")
    assert "model.allow_pickle = true, which the UI refuses" in msg  # said on load already
    components = _form(c, "pickle.toml")  # the TOML's allow_pickle travels in the session's State
    msg, _errors = c.predict(1, "pickle.toml", *components, api_name="/start_run")
    assert msg.startswith("error") and "model.allow_pickle = true" in msg, msg
    (served.project / "pickle.toml").write_text(body.replace("allow_pickle = true\n", ""), encoding="utf-8")
    components = _form(c, "pickle.toml")
    msg, _errors = c.predict(1, "pickle.toml", *components, api_name="/start_run")
    assert msg.startswith("error") and "pickle file" in msg, msg
    assert not (served.project / ".lorakiln-runs").exists()  # nothing was queued
    (served.project / "pickle.toml").unlink()
    served.unchanged_outside(before)


def test_tools_never_write_outside_the_project_or_over_an_input(served: Served) -> None:
    before = snapshot(served.root, served.project)
    c = client(served)
    source = str(served.loras / "style.safetensors")  # a --lora-dir file: readable, never written
    for target in ("../outside/victim.safetensors", str(served.outside / "victim.safetensors"),
                   "link-out/victim.safetensors", str(served.loras / "copy.safetensors")):
        msg = c.predict(source, target, "diffusers", "", True, api_name="/convert")
        assert msg.startswith("error") and "outside the project" in msg, (target, msg)
    # Inputs are drop-downs of the server's files: gradio refuses any other value before the
    # handler runs (and the handler's Sandbox would refuse it too, see test_tools_tab).
    for outside_input in (str(served.outside / "victim.safetensors"), "../outside/victim.safetensors"):
        with pytest.raises(Exception, match="not in the list of choices"):
            c.predict(outside_input, "output/x.safetensors", "diffusers", "", True, api_name="/convert")
    original = (served.project / "output" / "last.safetensors").read_bytes()
    for spelling in ("output/../output/last.safetensors", str(served.project / "output" / "last.safetensors")):
        msg = c.predict("output/last.safetensors", spelling, "diffusers", "", True, api_name="/convert")
        assert msg.startswith("error") and "is the input" in msg, msg
        msg = c.predict("output/last.safetensors", spelling, 1, None, "", None, "", True, api_name="/resize")
        assert msg.startswith("error") and "is the input" in msg, msg
    assert (served.project / "output" / "last.safetensors").read_bytes() == original
    msg = c.predict(["output/last.safetensors"], "", "../outside/m.safetensors", "", "", "sum", None, None, "", True,
                    api_name="/merge")
    assert msg.startswith("error") and "outside the project" in msg
    with pytest.raises(Exception, match="not in the list of choices"):
        c.predict([str(served.outside / "victim.safetensors")], "", "output/m.safetensors", "", "", "sum", None, None,
                  "", True, api_name="/merge")
    assert not c.predict(source, "output/conv.safetensors", "diffusers", "", False, api_name="/convert").startswith("error")
    with pytest.raises(Exception, match="not in the list of choices"):  # a symlink out of the project is not listed
        c.predict("link-out/victim.safetensors", False, api_name="/info")
    served.unchanged_outside(before)


def test_an_upload_named_dot_dot_lands_in_the_project(served: Served) -> None:
    before = snapshot(served.root, served.project)
    image = served.root / "upload.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(image)
    boundary = "lorakilnboundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="../../x.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    image.unlink()
    req = urllib.request.Request(f"{served.url}gradio_api/upload", data=body,
                                 headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as reply:
        [stored] = json.load(reply)
    files = [{"path": stored, "orig_name": "../../x.png", "meta": {"_type": "gradio.FileData"}}]
    event, (msg,) = raw_call(served, "import_uploads", [files, "up", "", "1"])
    assert event == "complete" and "1 image(s)" in msg, msg
    assert [p.name for p in (served.project / "train" / "1_up").iterdir()] == ["x.png"]
    for folder in (served.project, served.project / "train", served.root, served.root.parent):
        assert not (folder / "x.png").exists()
    event, (msg,) = raw_call(served, "import_uploads", [files, "../../up", "", "1"])
    assert "trigger word" in msg and "path" in msg
    event, result = raw_call(served, "import_uploads", [[{"path": str(served.outside / "photos" / "p0.png"),
                                                          "meta": {"_type": "gradio.FileData"}}], "up2", "", "1"])
    assert event == "error" and not (served.project / "train" / "1_up2").exists()  # gradio: not an upload
    shutil.rmtree(served.project / "train" / "1_up")
    served.unchanged_outside(before)


def _get(served: Served, path: str, host: str, method: str = "GET") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", host)
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_foreign_host_header_is_refused(served: Served) -> None:
    for host in ("evil.example", f"evil.example:{served.port}", "127.0.0.1.nip.io", "localhost.evil.example", ""):
        assert _get(served, "/", host) == 400, host
        assert _get(served, "/gradio_api/info", host) == 400, host
        assert _get(served, "/gradio_api/call/queue_table", host, "POST") == 400, host
    for host in (f"127.0.0.1:{served.port}", f"localhost:{served.port}", "lorakiln.lan", f"[::1]:{served.port}"):
        assert _get(served, "/", host) == 200, host


def test_the_file_server_serves_only_the_project(served: Served) -> None:
    def status(path: Path | str) -> int:
        try:
            with urllib.request.urlopen(f"{served.url}gradio_api/file={path}", timeout=30) as reply:
                return reply.status
        except urllib.error.HTTPError as err:
            return err.code

    assert status(served.project / "train" / "5_zwx" / "z0.png") == 200
    for path in (served.outside / "photos" / "p0.png", served.project / "link-out" / "photos" / "p0.png",
                 served.loras / "style.safetensors", "/etc/passwd"):
        assert status(path) == 403, path


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    code = ("import sys; from lorakiln.cli import main; rc = main(sys.argv[1:]); "
            "print('rc', rc, 'gradio' in sys.modules)")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)


def test_listen_without_auth_exits_before_gradio_loads(tmp_path: Path) -> None:
    project = str(tmp_path / "p")
    for argv in (["--listen"], ["--host", "192.168.1.5"], ["--listen", "--auth", "me:pw", "--allow-pickle"]):
        done = _cli("ui", "--project", project, *argv)
        assert done.stdout.strip() == "rc 2 False", (argv, done.stdout, done.stderr)
        assert "--auth" in done.stderr if "--auth" not in argv else "--allow-pickle" in done.stderr
    assert "reachable from the network" in _cli("ui", "--listen", "--project", project).stderr


def test_the_policy_for_listen_auth_and_pickles() -> None:
    from lorakiln.errors import ConfigError
    from lorakiln.ui.server import add_arguments, launch_options

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert launch_options(p.parse_args(["--listen", "--auth", "me:pw"]))["auth"] == [("me", "pw")]
    assert launch_options(p.parse_args(["--listen", "--insecure-no-auth"]))["auth"] is None
    assert launch_options(p.parse_args(["--allow-pickle"]))["server_name"] == "127.0.0.1"
    assert launch_options(p.parse_args(["--host", "::1"]))["server_name"] == "::1"  # loopback: no login needed
    with pytest.raises(ConfigError, match="--allow-pickle"):
        launch_options(p.parse_args(["--listen", "--insecure-no-auth", "--allow-pickle"]))


def test_insecure_no_auth_starts_with_a_red_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from lorakiln.cli import main
    from lorakiln.ui import server

    launched: list[tuple] = []
    monkeypatch.setattr(server, "serve", lambda box, options, hosts, **kw: launched.append((box, options, hosts)))
    assert main(["ui", "--listen", "--insecure-no-auth", "--project", str(tmp_path / "p"),
                 "--allowed-host", "gpu.lan"]) == 0
    err = capsys.readouterr().err
    assert server.RED in err and "WARNING: --insecure-no-auth" in err and "no login" in err
    [(box, options, hosts)] = launched
    assert options["server_name"] == "0.0.0.0" and options["auth"] is None and hosts == ["gpu.lan"]
    assert box.project == (tmp_path / "p").resolve() and not box.allow_pickle

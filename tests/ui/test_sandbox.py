"""The rules under the UI's trust model, without a server: the sandbox's path resolution
(symlinks, `..`, hub ids, pickles, upload names), the run-config guard and the Host policy."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lorakiln.config.schema import SECTIONS
from lorakiln.models.hub_id import looks_like_hub_id
from lorakiln.ui.hosts import HostPolicy, host_name
from lorakiln.ui.run_guard import PATH_KEYS, TEXT_KEYS, check_run, text_keys_of_schema
from lorakiln.ui.sandbox import Sandbox, SandboxError, safe_basename


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    """project/ with a symlink out of it, and models/ as a --models-dir; outside/ is no root."""
    for name in ("project", "models", "outside"):
        (tmp_path / name).mkdir()
    (tmp_path / "project" / "out-link").symlink_to(tmp_path / "outside")
    (tmp_path / "outside" / "m.safetensors").write_bytes(b"x")
    (tmp_path / "project" / "in-link").symlink_to(tmp_path / "models")
    return Sandbox.for_project(tmp_path / "project", model=[tmp_path / "models"])


def test_reads_resolve_symlinks_and_dot_dot(box: Sandbox, tmp_path: Path) -> None:
    models = tmp_path / "models"
    assert box.resolve_read("train/x.png", "data") == box.project / "train" / "x.png"
    assert box.resolve_read(models / "m.safetensors", "model") == models / "m.safetensors"
    assert box.resolve_read("in-link/m.safetensors", "model") == models / "m.safetensors"  # lands in a root
    assert box.resolve_read(models / "m.safetensors", "vae") == models / "m.safetensors"  # VAEs live among models
    for escape in ("../outside/m.safetensors", "out-link/m.safetensors", str(tmp_path / "outside"),
                   "train/../../outside", "~/.ssh/id_rsa"):
        with pytest.raises(SandboxError, match="outside the folders this UI may read"):
            box.resolve_read(escape, "model")
    with pytest.raises(SandboxError, match="--lora-dir"):
        box.resolve_read(models / "m.safetensors", "lora")  # a models folder is not a LoRA folder


def test_writes_stay_in_the_project_and_out_of_its_records(box: Sandbox, tmp_path: Path) -> None:
    assert box.resolve_write("output/a.safetensors") == box.project / "output" / "a.safetensors"
    for escape in ("../outside/a", "out-link/a", "in-link/a", str(tmp_path / "models" / "a"), "/tmp/a"):
        with pytest.raises(SandboxError, match="outside the project"):
            box.resolve_write(escape)
    with pytest.raises(SandboxError, match="run records"):
        box.resolve_write(".lorakiln-runs/queue.json")
    with pytest.raises(SandboxError, match="NUL"):
        box.resolve_write("a\x00b")


def test_models_hub_ids_builtins_and_pickles(box: Sandbox, tmp_path: Path) -> None:
    for name in ("tiny:sd1", "toy", "random:sdxl", "runwayml/stable-diffusion-v1-5"):
        assert box.resolve_model(name, "model") == name
    assert not looks_like_hub_id("../x") and not looks_like_hub_id("a/b.safetensors") and not looks_like_hub_id("/abs/x")
    (box.project / "org" / "name").mkdir(parents=True)  # an existing folder is a path, not a hub id
    assert box.resolve_model("org/name", "model") == str(box.project / "org" / "name")
    (box.project / "m.ckpt").write_bytes(b"pickle")
    with pytest.raises(SandboxError, match="pickle file"):
        box.resolve_model("m.ckpt", "model")
    assert Sandbox.for_project(box.project, allow_pickle=True).resolve_model("m.ckpt", "model").endswith("m.ckpt")
    with pytest.raises(SandboxError, match="--models-dir"):
        box.resolve_model(str(tmp_path / "outside" / "m.safetensors"), "model")


def test_roots_must_exist_and_are_listed(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="--lora-dir"):
        Sandbox.for_project(tmp_path / "p", lora=[tmp_path / "missing"])
    (tmp_path / "loras" / "a").mkdir(parents=True)
    (tmp_path / "loras" / "a" / "x.safetensors").write_bytes(b"")
    (tmp_path / "models" / "sd" ).mkdir(parents=True)
    (tmp_path / "models" / "sd" / "model_index.json").write_text("{}")
    (tmp_path / "models" / "b.safetensors").write_bytes(b"")
    (tmp_path / "models" / "c.ckpt").write_bytes(b"")
    args = argparse.Namespace(project=str(tmp_path / "p"), models_dir=[str(tmp_path / "models")], vae_dir=[],
                              lora_dir=[str(tmp_path / "loras")], embeddings_dir=[], data_dir=[], allow_pickle=False)
    box = Sandbox.from_args(args)
    assert box.listing("lora") == [str(tmp_path / "loras" / "a")]
    assert box.listing("model") == [str(tmp_path / "models" / "b.safetensors"), str(tmp_path / "models" / "sd")]
    assert "**lora** folders (read-only)" in box.describe() and "pickle files (.ckpt/.pt/.bin): refused" in box.describe()
    assert "--" not in box.describe()  # the UI names no server flag


def test_upload_names_become_plain_file_names() -> None:
    assert safe_basename("../../x.png") == "x.png"
    assert safe_basename("..\\..\\win.png") == "win.png"
    assert safe_basename("/etc/cron.d/job.png") == "job.png"
    assert safe_basename(".bashrc") == "bashrc"
    assert safe_basename("a b;rm -rf.png") == "a b_rm -rf.png"
    for bad in ("..", "../", "", "/"):
        with pytest.raises(SandboxError, match="no usable file name"):
            safe_basename(bad)


def test_every_string_key_of_the_schema_is_classified() -> None:
    """A key added to the schema must be sorted into PATH_KEYS or TEXT_KEYS (until then the UI
    refuses runs that set it)."""
    assert set(text_keys_of_schema()) <= set(PATH_KEYS) | TEXT_KEYS
    every = {f"{s}.{n}" for s, model in SECTIONS.items() for n in model.model_fields}
    assert set(PATH_KEYS) <= every


RUN = """[model]
pretrained_model = "tiny:sd1"
[data]
train_data_dir = "train"
[output]
output_dir = "output"
"""


def test_run_guard_checks_every_path_key(box: Sandbox, tmp_path: Path) -> None:
    toml = box.project / "run.toml"
    toml.write_text(RUN, encoding="utf-8")
    assert check_run(box, toml).output.output_dir == str(box.project / "output")
    outside = tmp_path / "outside"
    cases = {"output.output_dir": "../outside/o", "output.logging_dir": str(outside),
             "data.train_data_dir": "out-link", "train.resume": str(tmp_path / "models"),
             "prior.class_data_dir": str(outside / "class"), "validation.sample_prompts": "../outside/p.txt",
             "network.network_weights": "out-link/m.safetensors", "model.vae": "../outside/m.safetensors",
             "model.config_dir": str(outside)}
    for key, value in cases.items():
        with pytest.raises(SandboxError, match=key.replace(".", r"\.")):
            check_run(box, toml, [f'{key}="{value}"'])
    with pytest.raises(SandboxError, match="hub dataset id"):
        check_run(box, toml, ['data.dataset_name="../outside"'])
    with pytest.raises(SandboxError, match="allow_pickle"):
        check_run(box, toml, ["model.allow_pickle=true"])
    pickles = Sandbox.for_project(box.project, allow_pickle=True)
    assert check_run(pickles, toml, ["model.allow_pickle=true"]).model.allow_pickle
    with pytest.raises(SandboxError, match="hub id"):
        check_run(pickles, toml, ["model.allow_pickle=true", 'model.pretrained_model="org/model"'])
    with pytest.raises(SandboxError, match="outside the project"):
        check_run(box, outside / "run.toml")


def test_host_policy() -> None:
    assert [host_name(h) for h in ("LocalHost:7860", "[::1]:7860", "::1", "example.com.", "[bad")] == [
        "localhost", "::1", "::1", "example.com", ""]
    local = HostPolicy("127.0.0.1", ["ui.lan"])
    assert all(local.allows(h) for h in ("localhost:7860", "127.0.0.1", "[::1]:7860", "ui.lan:80", "a.localhost"))
    assert not any(local.allows(h) for h in ("evil.example", "10.0.0.2", "", None, "localhost.evil.example"))
    listening = HostPolicy("0.0.0.0", [])
    assert listening.allows("192.168.1.20:7860") and listening.allows("[fe80::1]:7860")
    assert not listening.allows("rebind.evil.example")
    bound = HostPolicy("10.0.0.2", [])
    assert bound.allows("10.0.0.2:7860") and not bound.allows("10.0.0.3")


def test_an_unclassified_string_key_fails_closed(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    import lorakiln.ui.run_guard as guard

    toml = box.project / "run.toml"
    toml.write_text(RUN, encoding="utf-8")
    monkeypatch.setattr(guard, "TEXT_KEYS", TEXT_KEYS - {"output.trigger_phrase"})  # as if newly added
    assert check_run(box, toml)  # unset: nothing to check
    with pytest.raises(SandboxError, match="output.trigger_phrase.*lorakiln train"):
        check_run(box, toml, ['output.trigger_phrase="/etc/passwd"'])


def test_file_name_keys_hold_no_path(box: Sandbox) -> None:
    toml = box.project / "run.toml"
    toml.write_text(RUN, encoding="utf-8")
    for ext in ("/../../../etc/passwd", "..\\\\x", ".t/xt"):
        with pytest.raises(SandboxError, match="data.caption_extension"):
            check_run(box, toml, [f'data.caption_extension="{ext}"'])
    assert check_run(box, toml, ['data.caption_extension=".caption"']).data.caption_extension == ".caption"

"""State swap with no gap (state.py, recovery.py): a process killed at each step of the swap
leaves a state that `--resume` finds and continues exactly; the leftovers are removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakiln.cli import main
from lorakiln.errors import TrainingError
from lorakiln.training.loop import train
from lorakiln.training.recovery import STATE_FILES, clean_leftovers, find_state

#: Saves at steps 2, 4 and 6 (and the final one): the kill hits the second save's swap, when a
#: previous state exists.
COMMON = dict(train__max_train_steps=6, output__save_every_n_steps=2, output__save_state=True)

#: Runs `lorakiln train TOML` with the swap's steps replaced by ones that kill the process
#: (os._exit: no `finally`, no clean-up, as a SIGKILL or a power cut) at the chosen point.
KILL_SCRIPT = r"""
import os, sys
from pathlib import Path
from lorakiln.training import state
from lorakiln.cli import main

point, toml = sys.argv[1], sys.argv[2]
real_rename, real_remove = state._rename, state._remove_tree

def rename(src, dst):
    src, dst = Path(src), Path(dst)
    if point == "rename-1" and src.name == "last-state":  # <name>-state -> .<name>-state.old
        os._exit(9)
    if point == "rename-2" and dst.name == "last-state" and dst.with_name(".last-state.old").exists():
        os._exit(9)  # temporary folder -> <name>-state, the previous state set aside
    real_rename(src, dst)

def remove(path):
    if point == "cleanup" and Path(path).name == ".last-state.old":  # after the swap
        os._exit(9)
    real_remove(path)

state._rename, state._remove_tree = rename, remove
sys.exit(main(["train", toml]))
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, config_maker) -> dict[str, torch.Tensor]:
    result = train(config_maker(tmp_path_factory.mktemp("full"), **COMMON), progress=False)
    return load_file(str(result.lora_path))


@pytest.mark.parametrize(("point", "resumed_at"), [("rename-1", 2), ("rename-2", 4), ("cleanup", 4)])
def test_kill_at_each_swap_step_then_resume_continues_exactly(point, resumed_at, run_toml, tmp_path,
                                                              uninterrupted, capsys) -> None:
    toml = run_toml(**COMMON)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, point, str(toml)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 9, proc.stdout + proc.stderr
    assert [p for p in out.iterdir() if p.name.startswith(".last-state.")]  # what the kill left
    assert (out / "last-state").exists() == (point != "rename-2")  # the gap the fallback covers
    assert (out / "last.lock").is_file()  # a killed run releases nothing

    assert main(["train", str(toml), "--resume"]) == 0
    text = capsys.readouterr().out
    assert "took over the stale lock" in text
    assert f"resumed from {out / 'last-state'} at step {resumed_at} " in text
    if point == "rename-2":
        assert "restored it from .last-state." in text and "(step 4)" in text
    assert "leftover(s) of interrupted saves" in text
    assert not [p.name for p in out.iterdir() if p.name.startswith(".last")]
    resumed = load_file(str(out / "last.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert torch.equal(resumed[key], uninterrupted[key]), key


def _fake_state(folder: Path, step: int, *, complete: bool = True) -> Path:
    folder.mkdir(parents=True)
    for name in STATE_FILES[:-1]:
        (folder / name).write_bytes(b"x")
    if complete:
        (folder / "state.json").write_text(json.dumps({"position": {"global_step": step}}), encoding="utf-8")
    return folder


def test_find_state_falls_back_to_the_newest_complete_neighbour(tmp_path: Path) -> None:
    _fake_state(tmp_path / ".last-state.old", 2)
    _fake_state(tmp_path / ".last-state.abc123.tmp", 4)
    _fake_state(tmp_path / ".last-state.def456.tmp", 6, complete=False)  # killed mid-write
    found, note = find_state(tmp_path / "last-state")
    assert found.name == ".last-state.abc123.tmp" and "is missing" in note and "step 4" in note
    _fake_state(tmp_path / "last-state", 3)
    assert find_state(tmp_path / "last-state") == (tmp_path / "last-state", None)


def test_find_state_without_any_state_names_the_loras(tmp_path: Path) -> None:
    (tmp_path / "last-step00000004.safetensors").write_bytes(b"x")
    with pytest.raises(TrainingError) as err:
        find_state(tmp_path / "last-state")
    assert "does not exist" in str(err.value) and "last-step00000004.safetensors" in str(err.value)


def test_clean_leftovers_removes_only_this_outputs_leftovers(tmp_path: Path) -> None:
    _fake_state(tmp_path / "last-state", 4)
    _fake_state(tmp_path / ".last-state.old", 2)
    _fake_state(tmp_path / ".last-state.k2j3h4.tmp", 6, complete=False)
    ours = [".last.safetensors.a1b2c3.tmp", ".last-000002.safetensors.x_y.tmp", ".last_config.toml.q9.tmp",
            ".last-step00000010_emb.safetensors.zz.tmp", ".last_epochs_x_strengths.png.p0.tmp"]
    others = [".other.safetensors.a1b2c3.tmp", "last.safetensors", ".lastfoo.safetensors.a1.tmp",
              "notes.tmp", ".last.lock"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"x")
    _fake_state(tmp_path / ".other-state.old", 1)
    removed = clean_leftovers(tmp_path, "last", log=None)
    assert sorted(removed) == sorted([".last-state.old", ".last-state.k2j3h4.tmp", *ours])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, "last-state", ".other-state.old"])


def test_clean_leftovers_keeps_complete_states_beside_an_incomplete_one(tmp_path: Path) -> None:
    _fake_state(tmp_path / "last-state", 4, complete=False)  # damaged by hand, say
    _fake_state(tmp_path / ".last-state.old", 2)
    assert clean_leftovers(tmp_path, "last", log=None) == []
    assert (tmp_path / ".last-state.old" / "state.json").is_file()

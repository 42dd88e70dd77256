"""The Train tab's wiring helpers: Start's checked path, the reload after Start, the page-load
refresh of the folder drop-downs, and the layout's element ids (the page script reads keys
back from them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lorakiln.ui import train_layout as layout
from lorakiln.ui.forms import field_specs
from lorakiln.ui.sandbox import Sandbox


def test_elem_ids_give_the_key_back() -> None:
    for spec in field_specs():
        element = layout.elem_id(spec.key)
        assert element.startswith("cfg-") and element[4:].replace("-", ".", 1) == spec.key


def test_a_refused_start_marks_fields_and_keeps_the_users_edits(project: Sandbox, tiny_form: Callable) -> None:
    extra, components = tiny_form(1)
    keys = [s.key for s in field_specs()]
    bad = list(components)
    bad[keys.index("train.learning_rate")] = -1.0
    run_id, message, errors = layout.start_checked(project, 1, "run.toml", extra, *bad)
    assert run_id == "" and message.startswith("error: Start refused") and "greater than 0" in message
    assert list(errors) == ["cfg-train-learning_rate"]
    assert not (project.project / "run.toml").exists() and not (project.project / ".lorakiln-runs").exists()
    kept = layout.reload_unless_refused(project, "run.toml", errors)
    assert len(kept) == 1 + len(keys) and all(v.get("__type__") == "update" and len(v) == 1 for v in kept)


def test_processes_must_be_a_whole_number_from_one(project: Sandbox, tiny_form: Callable) -> None:
    extra, components = tiny_form(1)
    for bad in (0, 2.5, "many"):
        run_id, message, errors = layout.start_checked(project, bad, "run.toml", extra, *components)
        assert run_id == "" and "processes" in message and list(errors) == ["train-processes"], message
    assert not (project.project / ".lorakiln-runs").exists()
    steps = layout.total_steps(project, 2, "run.toml", extra, *components)
    assert "2 processes: global batch = train_batch_size" in steps, steps


def test_page_load_lists_models_added_after_start(project: Sandbox, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    box = Sandbox.for_project(project.project, model=[models])
    before = dict(zip(layout.PICKED, layout.picker_choices(box), strict=True))
    (models / "added.safetensors").write_bytes(b"")
    after = dict(zip(layout.PICKED, layout.picker_choices(box), strict=True))
    new = str(models / "added.safetensors")
    assert new not in before["model.pretrained_model"]["choices"]
    assert new in after["model.pretrained_model"]["choices"]

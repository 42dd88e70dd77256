"""Caption editing over a folder: add / remove / replace, dry runs, atomic writes, the CLI runner."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest

from lorakiln.data.caption_edit import add_tag, edit_captions, plan_edit, remove_phrases, replace_text
from lorakiln.data.caption_rules import (
    add_to_caption,
    remove_edit,
    remove_from_caption,
    replace_edit,
    replace_in_caption,
)
from lorakiln.errors import ConfigError, DatasetError, LorakilnError
from lorakiln.prep.caption_command import add_edit_arguments, run_edit

SEED = "photo of anantn, a man with black hair and brown skin in an orange shirt"
TAGS = "anantn, 1boy, black hair, brown skin, black hair ribbon, smile"


# ------------------------------------------------------------------ text rules


@pytest.mark.parametrize(("phrase", "expected"), [
    ("black hair", "photo of anantn, a man with brown skin in an orange shirt"),
    ("brown skin", "photo of anantn, a man with black hair in an orange shirt"),
    ("black hair, brown skin", "photo of anantn, a man in an orange shirt"),
    ("BLACK   Hair, brown skin", "photo of anantn, a man in an orange shirt"),
    ("orange shirt", "photo of anantn, a man with black hair and brown skin"),
    ("an orange shirt", "photo of anantn, a man with black hair and brown skin"),
    ("photo of anantn", "a man with black hair and brown skin in an orange shirt"),
    ("sunglasses", SEED),  # absent: untouched, byte for byte
    ("hair", "photo of anantn, a man with black brown skin in an orange shirt"),  # literal, documented
])
def test_remove_from_sentence(phrase: str, expected: str) -> None:
    assert remove_from_caption(SEED, phrase) == expected


def test_remove_from_sentence_connectors() -> None:
    assert remove_from_caption("a man with a beard and a hat.", "beard") == "a man with a hat."
    assert remove_from_caption("a man with a beard and a hat.", "a hat") == "a man with a beard."
    assert remove_from_caption("a man wearing sunglasses", "sunglasses") == "a man"
    assert remove_from_caption("a man with black hair smiling", "black hair") == "a man smiling"
    assert remove_from_caption("a man with black hairband", "black hair") == "a man with black hairband"
    assert remove_from_caption("a chair", "hair") == "a chair"  # word boundaries


def test_remove_whole_tags_only_when_the_tag_exists() -> None:
    assert remove_from_caption(TAGS, "black hair") == "anantn, 1boy, brown skin, black hair ribbon, smile"
    assert remove_from_caption(TAGS, "Black Hair, SMILE") == "anantn, 1boy, brown skin, black hair ribbon"
    assert remove_from_caption("black hair, a", "black hair") == "a"


def test_remove_leaves_no_double_or_trailing_commas() -> None:
    assert remove_from_caption("a, b ,, c,", "b") == "a, c"
    assert remove_from_caption("b, a", "b") == "a"
    assert remove_from_caption("a, with black hair, c", "black hair") == "a, c"
    assert remove_from_caption("black hair", "black hair") == ""


def test_add_skips_existing_tags_case_insensitively() -> None:
    assert add_to_caption("ANANTN, a man", "anantn") == "ANANTN, a man"
    assert add_to_caption("a man, anantn", "anantn", "start") == "a man, anantn"  # present: not moved
    assert add_to_caption("a man", "anantn") == "a man, anantn"
    assert add_to_caption("a man", "anantn", "start") == "anantn, a man"
    assert add_to_caption("a man,", "anantn") == "a man, anantn"
    assert add_to_caption("a man.", "wearing sunglasses") == "a man, wearing sunglasses"
    assert add_to_caption("a man, smile", "smile, anantn, Anantn") == "a man, smile, anantn"
    assert add_to_caption(None, "anantn") is None
    assert add_to_caption(None, "anantn", create_missing=True) == "anantn"


def test_replace_plain_is_literal_and_word_bounded() -> None:
    assert replace_in_caption("a man, a woman, manly, Man", "man", "person") == "a person, a woman, manly, person"
    assert replace_in_caption("a man", "man", r"wo\1man") == r"a wo\1man"
    assert replace_in_caption("a man, black hair, tall", "black hair", "") == "a man, tall"
    assert replace_in_caption("a woman", "man", "x") == "a woman"


def test_replace_regex() -> None:
    assert replace_in_caption("1girl, long_hair, blue_eyes", "_", " ", regex=True) == "1girl, long hair, blue eyes"
    assert replace_in_caption("black hair, brown hair", r"(\w+) hair", r"\1 fur", regex=True) == "black fur, brown fur"
    assert replace_in_caption("Black hair", "black", "x", regex=True) == "Black hair"  # as written: case-sensitive
    assert replace_in_caption("Black hair", "(?i)black", "x", regex=True) == "x hair"


@pytest.mark.parametrize("make", [
    lambda: replace_edit("(unclosed", "x", regex=True),
    lambda: replace_edit("  ", "x"),
    lambda: remove_edit([" , "]),
    lambda: remove_edit([]),
])
def test_bad_edit_arguments_are_config_errors(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        make()


# ------------------------------------------------------------------ folders


@pytest.fixture
def dataset(tmp_path: Path, make_image) -> Path:  # type: ignore[no-untyped-def]
    """`train/10_anantn`: a sentence caption, a tag caption, an image without caption."""
    root = tmp_path / "train"
    folder = root / "10_anantn"
    make_image(folder / "a.png", caption=SEED + "\n")
    make_image(folder / "b.jpg", caption=TAGS)
    make_image(folder / "c.png")
    return root


def _snapshot(root: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_remove_over_a_folder(dataset: Path) -> None:
    folder = dataset / "10_anantn"
    images_before = {p: p.read_bytes() for p in folder.iterdir() if p.suffix != ".txt"}
    plan = remove_phrases(dataset, ["black hair", "brown skin"])
    assert not plan.dry_run
    assert [c.path.name for c in plan.changes] == ["a.txt", "b.txt"]
    assert (folder / "a.txt").read_text(encoding="utf-8") == "photo of anantn, a man in an orange shirt\n"
    assert (folder / "b.txt").read_text(encoding="utf-8") == "anantn, 1boy, black hair ribbon, smile"
    assert plan.unchanged == 0 and [p.name for p in plan.without_caption] == ["c.png"]
    assert not (folder / "c.txt").exists()
    assert {p: p.read_bytes() for p in images_before} == images_before
    assert "2 caption file(s) changed, 0 unchanged, 1 image(s) without a .txt caption" in plan.summary()
    assert not list(folder.glob(".*"))  # no temporary files left


def test_dry_run_writes_nothing(dataset: Path) -> None:
    before = _snapshot(dataset)
    plan = remove_phrases(dataset, ["black hair"], dry_run=True)
    assert _snapshot(dataset) == before
    assert plan.dry_run and len(plan.changes) == 2
    diff = plan.format_diff()
    assert "--- 10_anantn/a.txt\n- " + SEED + "\n+ photo of anantn, a man with brown skin in an orange shirt" in diff
    assert "dry run: nothing was written" in plan.summary()
    add = add_tag(dataset, "anantn", create_missing=True, dry_run=True)
    assert _snapshot(dataset) == before
    assert "--- 10_anantn/c.txt\n- (no caption file)\n+ anantn" in add.format_diff()


def test_add_creates_missing_and_skips_duplicates(dataset: Path) -> None:
    folder = dataset / "10_anantn"
    plan = add_tag(dataset, "anantn", position="start", create_missing=True)
    # a.txt has "photo of anantn" (a different tag) so it gets the trigger; b.txt already has it.
    assert [(c.path.name, c.old) for c in plan.changes] == [("a.txt", SEED), ("c.txt", None)]
    assert (folder / "a.txt").read_text(encoding="utf-8") == f"anantn, {SEED}\n"
    assert (folder / "b.txt").read_text(encoding="utf-8") == TAGS
    assert (folder / "c.txt").read_text(encoding="utf-8") == "anantn\n"
    assert plan.unchanged == 1 and not plan.without_caption
    again = add_tag(dataset, "anantn", position="start", create_missing=True)
    assert not again.changes and again.unchanged == 3


def test_add_without_create_missing_leaves_images_uncaptioned(dataset: Path) -> None:
    plan = add_tag(dataset, "wearing sunglasses")
    assert len(plan.changes) == 2 and [p.name for p in plan.without_caption] == ["c.png"]
    assert not (dataset / "10_anantn" / "c.txt").exists()


def test_other_lines_bom_and_line_endings_are_kept(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "5_sks"
    make_image(folder / "multi.png")
    (folder / "multi.txt").write_bytes(b"\n  a man, black hair  \r\nsecond line, black hair\r\n\r\nnotes\n")
    make_image(folder / "bom.png")
    (folder / "bom.txt").write_bytes("\ufeffblack hair, caf\u00e9".encode())
    make_image(folder / "blank.png")
    (folder / "blank.txt").write_bytes(b"\n\n")
    plan = replace_text(folder, "black hair", "red hair")
    assert (folder / "multi.txt").read_bytes() == b"\na man, red hair\r\nsecond line, black hair\r\n\r\nnotes\n"
    assert (folder / "bom.txt").read_bytes() == "red hair, caf\u00e9".encode()  # BOM dropped: kohya reads utf-8
    assert (folder / "blank.txt").read_bytes() == b"\n\n"
    assert [p.name for p in plan.without_caption] == ["blank.png"]
    add_tag(folder, "sks", create_missing=True)
    assert (folder / "blank.txt").read_bytes() == b"sks\n\n"


def test_replace_regex_over_a_folder(dataset: Path) -> None:
    replace_text(dataset, r"(black|brown) (hair|skin)", r"\2 \1", regex=True)
    assert (dataset / "10_anantn" / "b.txt").read_text(encoding="utf-8") == \
        "anantn, 1boy, hair black, skin brown, hair black ribbon, smile"


def test_shared_stem_edited_once(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    make_image(tmp_path / "a.png", caption="a man")
    make_image(tmp_path / "a.jpg")
    plan = replace_text(tmp_path, "man", "man man")
    assert len(plan.changes) == 1
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "a man man"


def test_recursion_and_hidden_folders(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    make_image(tmp_path / "top.png", caption="x")
    make_image(tmp_path / "3_a" / "deep" / "d.png", caption="x")
    make_image(tmp_path / ".cache" / "h.png", caption="x")
    make_image(tmp_path / "._resource.png", caption="x")
    assert [c.path.name for c in plan_edit(tmp_path, [replace_edit("x", "y")]).changes] == ["d.txt", "top.txt"]
    flat = plan_edit(tmp_path, [replace_edit("x", "y")], recursive=False)
    assert [c.path.name for c in flat.changes] == ["top.txt"]


def test_symlinked_folders_are_followed_once(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    make_image(tmp_path / "images" / "a.png", caption="x")
    root = tmp_path / "train"
    root.mkdir()
    (root / "10_a").symlink_to(tmp_path / "images", target_is_directory=True)
    (tmp_path / "images" / "loop").symlink_to(root, target_is_directory=True)
    plan = plan_edit(root, [replace_edit("x", "y")])
    assert [c.path.relative_to(root).as_posix() for c in plan.changes] == ["10_a/a.txt"]


def test_caption_extension_without_dot_and_other_files(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    make_image(tmp_path / "a.png", caption="black hair, x", caption_ext=".caption")
    make_image(tmp_path / "a2.png", caption="black hair, x")
    plan = remove_phrases(tmp_path, ["black hair"], caption_extension="caption")
    assert [c.path.name for c in plan.changes] == ["a.caption"]
    assert (tmp_path / "a2.txt").read_text(encoding="utf-8") == "black hair, x"
    with pytest.raises(ConfigError, match="'.png'"):
        remove_phrases(tmp_path, ["x"], caption_extension=".png")


def test_file_mode_is_kept(dataset: Path) -> None:
    caption = dataset / "10_anantn" / "a.txt"
    caption.chmod(0o640)
    image = dataset / "10_anantn" / "c.png"
    image.chmod(0o604)
    add_tag(dataset, "new tag", create_missing=True)
    assert stat.S_IMODE(caption.stat().st_mode) == 0o640
    assert stat.S_IMODE((dataset / "10_anantn" / "c.txt").stat().st_mode) == 0o604


def test_missing_folder_and_folder_without_images(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=str(missing)):
        remove_phrases(missing, ["x"])
    (tmp_path / "empty" / "10_x").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"no images .* found in .*empty"):
        add_tag(tmp_path / "empty", "x")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="is a file"):
        add_tag(tmp_path / "file.png", "x")


def test_non_utf8_caption_stops_before_any_write(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    make_image(tmp_path / "a.png", caption="black hair, a")
    make_image(tmp_path / "b.png")
    (tmp_path / "b.txt").write_bytes(b"caf\xe9, black hair")
    before = _snapshot(tmp_path)
    with pytest.raises(DatasetError, match=r"b\.txt.*not UTF-8"):
        remove_phrases(tmp_path, ["black hair"])
    assert _snapshot(tmp_path) == before


def test_edits_compose_in_order(dataset: Path) -> None:
    plan = edit_captions(dataset, [remove_edit(["black hair"]), replace_edit("brown skin", "tan skin")],
                         dry_run=True)
    assert plan.changes[1].new == "anantn, 1boy, tan skin, black hair ribbon, smile"


def test_emptied_caption_warns(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    make_image(tmp_path / "a.png", caption="black hair")
    plan = remove_phrases(tmp_path, ["black hair"])
    assert plan.emptied and "end up empty" in plan.summary()
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == ""


# ------------------------------------------------------------------ CLI runner


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_edit_arguments(parser)
    return run_edit(parser.parse_args(argv))


def test_cli_dry_run_prints_diff(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(dataset)
    assert _run([str(dataset), "--remove", "black hair", "brown skin", "--add", "anantn", "--at", "start",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert _snapshot(dataset) == before
    assert "- " + SEED in out and "+ anantn, photo of anantn, a man in an orange shirt" in out
    assert "2 caption file(s) would change" in out and "dry run" in out


def test_cli_edit_writes(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run([str(dataset), "--replace", "man", "woman", "--caption-extension", "txt"]) == 0
    assert "1 caption file(s) changed" in capsys.readouterr().out
    assert (dataset / "10_anantn" / "a.txt").read_text(encoding="utf-8").startswith("photo of anantn, a woman with")
    assert _run([str(dataset), "--regex", "--replace", "^", "zz, "]) == 0
    assert (dataset / "10_anantn" / "b.txt").read_text(encoding="utf-8").startswith("zz, anantn")


@pytest.mark.parametrize("argv", [[], ["--at", "start", "--remove", "x"], ["--regex", "--remove", "x"],
                                  ["--create-missing", "--remove", "x"]])
def test_cli_refuses_meaningless_flags(dataset: Path, argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        _run([str(dataset), *argv])


def test_cli_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(LorakilnError, match="nope"):
        _run([str(tmp_path / "nope"), "--add", "x"])


def test_cli_folder_after_the_phrase_as_the_readme_types_it(dataset: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`dataset edit --remove "side view" train`: the folder is not swallowed as a second phrase."""
    from lorakiln.cli import main

    folder = dataset / "10_anantn"
    (folder / "c.txt").write_text("anantn, side view, smile", encoding="utf-8")
    monkeypatch.chdir(dataset.parent)
    assert main(["dataset", "edit", "--remove", "side view", "train"]) == 0
    assert (folder / "c.txt").read_text(encoding="utf-8") == "anantn, smile"
    assert main(["dataset", "edit", "--remove", "black hair", "brown skin", "train", "--dry-run"]) == 0
    assert "2 caption file(s) would change" in capsys.readouterr().out
    assert main(["dataset", "edit", "train", "--remove", "smile", "--dry-run"]) == 0  # the README's order
    with pytest.raises(ConfigError, match="'brown skin' is not a folder"):
        _run(["--remove", "black hair", "brown skin"])
    with pytest.raises(ConfigError, match="no folder given"):
        _run(["--add", "x"])

"""Where the web UI may read and write: decided by the server's flags, never by a request.

The UI runs trainings and writes files on the machine it serves from, so every path a browser
names is untrusted input. Following Jupyter's and AUTOMATIC1111's security notes (the server
is started on one root folder, and extra model folders are given on its command line, e.g.
A1111's ``--ckpt-dir`` / ``--lora-dir``), a `Sandbox` is built once from ``lorakiln ui``'s
arguments:

* the **project** (``--project``) is the only folder the UI writes to, and is always readable;
* each kind of input (base models, VAEs, LoRAs, embeddings, image folders) may also be read
  from the folders given for it (``--models-dir``, ``--vae-dir``, ``--lora-dir``,
  ``--embeddings-dir``, ``--data-dir``; each repeatable);
* a path is resolved first (``~``, ``..`` and every symlink) and refused with `SandboxError`
  when the real location leaves those roots, so a symlink inside the project that points
  elsewhere does not open a way out;
* the built-in models (``toy``, ``tiny:…``, ``random:…``) and hub ids (``org/name``) name no
  local path and stay allowed for base models, VAEs and caption models.

Every tab resolves paths through one `Sandbox`; `lorakiln.ui.run_guard` applies it to every
path-valued key of a run config before a training is queued.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

from lorakiln.errors import LorakilnError
from lorakiln.models.hub_id import looks_like_hub_id

#: kind → the ``lorakiln ui`` flag that adds read-only roots for it (shown in refusals).
KIND_FLAGS: dict[str, str] = {"model": "--models-dir", "vae": "--vae-dir", "lora": "--lora-dir",
                              "embedding": "--embeddings-dir", "data": "--data-dir", "project": "--project"}
#: kinds whose roots also serve another kind: A1111 keeps VAEs among models, and a pivotal
#: run's ``_emb`` files sit next to its LoRA.
_SHARED: dict[str, tuple[str, ...]] = {"vae": ("model",), "embedding": ("lora",)}
#: Built-in model names that are not paths (`lorakiln.models.configured`).
BUILTIN_MODELS = ("toy",)
BUILTIN_PREFIXES = ("tiny:", "random:")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
#: Folders inside the project that hold the server's own state: the run queue's records name
#: the commands it runs, so no request may write there.
PROTECTED = (".lorakiln-runs",)
_LISTING_LIMIT = 300


class SandboxError(LorakilnError):
    """A request named a path outside the folders the server was started with."""


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass(frozen=True, eq=False)  # identity hash: the roots dict is not hashable
class Sandbox:
    """The project folder and the read-only roots per kind, all resolved at start-up."""

    project: Path
    roots: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    allow_pickle: bool = False

    @classmethod
    def for_project(cls, project: str | Path, *, allow_pickle: bool = False, **roots: list[str | Path]) -> Sandbox:
        """A sandbox on `project` (created if missing) with ``kind=[folders]`` read roots.

        A root that is not an existing folder is refused at start-up rather than at first use."""
        home = Path(project).expanduser().resolve()
        home.mkdir(parents=True, exist_ok=True)
        checked: dict[str, tuple[Path, ...]] = {}
        for kind, folders in roots.items():
            if kind not in KIND_FLAGS:
                raise ValueError(f"unknown path kind {kind!r}")
            resolved = []
            for folder in folders or []:
                path = Path(folder).expanduser().resolve()
                if not path.is_dir():
                    raise SandboxError(f"{KIND_FLAGS[kind]} {folder}: not a folder; pass an existing folder")
                resolved.append(path)
            checked[kind] = tuple(dict.fromkeys(resolved))
        return cls(home, checked, allow_pickle)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sandbox:
        """The sandbox of ``lorakiln ui``'s parsed arguments."""
        return cls.for_project(args.project, allow_pickle=bool(getattr(args, "allow_pickle", False)),
                               model=args.models_dir, vae=args.vae_dir, lora=args.lora_dir,
                               embedding=args.embeddings_dir, data=args.data_dir)

    # -- the rules ------------------------------------------------------------------------------

    def read_roots(self, kind: str) -> tuple[Path, ...]:
        """The project, then the folders given for `kind` (and the kinds it shares roots with)."""
        if kind not in KIND_FLAGS:
            raise ValueError(f"unknown path kind {kind!r}")
        extra = [*self.roots.get(kind, ()), *(r for k in _SHARED.get(kind, ()) for r in self.roots.get(k, ()))]
        return tuple(dict.fromkeys([self.project, *extra]))

    def _absolute(self, value: str | Path, base: Path | None) -> tuple[str, Path]:
        text = str(value).strip()
        if not text:
            raise SandboxError("no path given")
        if "\x00" in text:
            raise SandboxError(f"{text!r}: a path cannot contain a NUL character")
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = (base or self.project) / path
        return text, path.resolve()  # every symlink and `..`: where the file really is

    def resolve_read(self, value: str | Path, kind: str, *, base: Path | None = None, what: str = "") -> Path:
        """`value` (relative to `base`, default the project) resolved, if it lies in a root for `kind`."""
        text, path = self._absolute(value, base)
        roots = self.read_roots(kind)
        if any(_inside(path, root) for root in roots):
            return path
        flag = KIND_FLAGS[kind]
        hint = (f"move or copy it into the project, or start `lorakiln ui` with {flag} {path.parent}"
                if kind != "project" else "only files inside the project can be used here")
        raise SandboxError(f"{what or 'path'} {text!r} resolves to {path}, outside the folders this UI may read "
                           f"({', '.join(map(str, roots))}); {hint}")

    def resolve_write(self, value: str | Path, *, base: Path | None = None, what: str = "") -> Path:
        """`value` resolved, if it lies inside the project and outside the server's own state."""
        text, path = self._absolute(value, base)
        if not _inside(path, self.project):
            raise SandboxError(f"{what or 'output'} {text!r} resolves to {path}, outside the project "
                               f"{self.project}; the UI writes only inside its project: use a path in it")
        for name in PROTECTED:
            if _inside(path, self.project / name):
                raise SandboxError(f"{what or 'output'} {text!r} is inside {self.project / name}, the UI's own "
                                   "run records; choose another folder of the project")
        return path

    def resolve_model(self, value: str, kind: str, *, base: Path | None = None, what: str = "") -> str:
        """A base model / VAE / caption model: a built-in name or hub id as given, else a path
        resolved by `resolve_read` (returned absolute, so no later lookup depends on a cwd)."""
        text = (value or "").strip()
        if is_builtin(text):
            return text
        if looks_like_hub_id(text) and not (base or self.project).joinpath(text).exists() and not Path(text).exists():
            return text  # a loader would take an existing relative folder first: those are paths
        path = self.resolve_read(text, kind, base=base, what=what)
        if path.suffix.lower() in PICKLE_SUFFIXES and not self.allow_pickle:
            raise SandboxError(f"{what or 'model'} {text!r} is a pickle file, which can run code when loaded; "
                               "the UI loads only .safetensors files and diffusers folders (convert it, or use "
                               "the CLI's model.allow_pickle for a file you trust)")
        return str(path)

    # -- what the UI lists ------------------------------------------------------------------------

    def listing(self, kind: str) -> list[str]:
        """Files and folders of the roots for `kind` to offer in drop-downs (a bounded scan)."""
        found: list[str] = []
        for root in self.read_roots(kind):
            for path in _candidates(root, kind, self.allow_pickle):
                found.append(str(path))
                if len(found) >= _LISTING_LIMIT:
                    return found
        return found

    def describe(self) -> str:
        """Markdown naming the project and every root, for the top of the UI (in the UI's words:
        the person at the browser may not be the one who started the server)."""
        lines = [f"**project** (reads and writes): `{self.project}`"]
        for kind in KIND_FLAGS:
            if self.roots.get(kind):
                lines.append(f"**{kind}** folders (read-only): " + ", ".join(f"`{r}`" for r in self.roots[kind]))
        lines.append("pickle files (.ckpt/.pt/.bin): " + ("allowed by this server" if self.allow_pickle else
                                                          "refused (they can run code when loaded)"))
        return "  \n".join(lines)


def is_builtin(value: str) -> bool:
    """`toy`, `tiny:sd1`, `random:sdxl`, …: models the package builds, no path involved."""
    return value in BUILTIN_MODELS or value.startswith(BUILTIN_PREFIXES)


def _candidates(root: Path, kind: str, allow_pickle: bool) -> list[Path]:
    """Model files and diffusers folders (model kinds) or folders holding LoRA files / images,
    up to two levels below `root`, skipping hidden folders."""
    suffixes = (".safetensors", *(PICKLE_SUFFIXES if allow_pickle else ()))
    out: list[Path] = []
    levels = [[root]]
    for _ in range(2):
        level = []
        for folder in levels[-1]:
            try:
                entries = sorted(folder.iterdir())
            except OSError:
                continue
            level += [p for p in entries if p.is_dir() and not p.name.startswith(".")]
            if kind in ("model", "vae"):
                out += [p for p in entries if p.is_file() and p.suffix.lower() in suffixes]
        levels.append(level)
    folders = [f for lvl in levels for f in lvl]
    if kind in ("model", "vae"):
        marker = "model_index.json" if kind == "model" else "config.json"
        out += [f for f in folders if (f / marker).is_file()]
    elif kind in ("lora", "embedding"):
        out += [f for f in folders if any(f.glob("*.safetensors"))]
    else:
        out += folders
    return out[:_LISTING_LIMIT]


SAFE_NAME = re.compile(r"[^A-Za-z0-9._ ()+-]")


def safe_basename(name: str) -> str:
    """An uploaded file's name as a plain file name: the last component only (so
    ``../../x.png`` becomes ``x.png``), odd characters replaced; refused when nothing is left."""
    base = re.split(r"[\\/]", str(name))[-1].strip()
    base = SAFE_NAME.sub("_", base).lstrip(".")
    if not base or base in (".", ".."):
        raise SandboxError(f"upload name {name!r} has no usable file name; rename the file and upload it again")
    return base

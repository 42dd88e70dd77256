"""Where a caption model's weights come from, decided in seconds, before anything slow starts.

A caption model is a local folder or a Hugging Face hub id. Handed a hub id on a machine
without internet, transformers and huggingface_hub retry the hub for minutes (the UI showed a
spinner for ~215 s) before failing. So the source is resolved first, the way the CLI and the
web UI both need it:

1. an existing folder is used as it is (never a download);
2. a hub id whose files are already in the local Hugging Face cache is loaded from there with
   ``local_files_only`` (huggingface_hub's `try_to_load_from_cache`, the lookup
   `hf_hub_download(local_files_only=True)` does), so a cached model works offline;
3. otherwise a download is attempted only when the hub can be reached: never with
   ``HF_HUB_OFFLINE`` set (huggingface_hub's own switch), and otherwise only after the hub
   endpoint (``HF_ENDPOINT``, through ``HTTPS_PROXY`` when set) answers an HTTPS request within
   `HUB_PROBE_TIMEOUT` seconds. DNS is inside that bound too: the probe runs in a thread that
   is waited for at most that long.

When none of these works the result is `ModelUnavailable`, which carries the facts (hub id,
why the hub is out of reach, the files a folder must hold, the command that makes one) so each
front end words it for its users: the CLI's message names ``--model``; the UI's
(`lorakiln.ui.wording.missing_model_words`) names its own field and the server's folders.

The probe, ``HF_HUB_OFFLINE`` and the cache location are `lorakiln.models.hub_access`'s, shared
with the base-model loader, so a caption model and a base model are judged by the same rules.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lorakiln.errors import ModelLoadError
from lorakiln.models import hub_access
from lorakiln.models.hub_access import (
    DEFAULT_ENDPOINT,
    HUB_PROBE_TIMEOUT,
    cached_files,
    hub_cache_dir,
    hub_endpoint,
    hub_offline,
    hub_unreachable,
    offline_advice,
    offline_reason,
)
from lorakiln.models.hub_id import looks_like_hub_id

# The probe and the cache rules live in `models.hub_access`, shared with the base-model loader;
# they are re-exported here for the caption front ends (CLI, web UI) that import them from here.
__all__ = ["DEFAULT_ENDPOINT", "HUB_PROBE_TIMEOUT", "ModelSource", "ModelUnavailable", "cached_files", "hub_access",
           "hub_cache_dir", "hub_endpoint", "hub_error", "hub_offline", "hub_unreachable", "offline_reason",
           "resolve_caption_model", "resolve_model_source"]


class ModelUnavailable(ModelLoadError):
    """A hub model that is neither a local folder nor in the local cache, on a machine that
    cannot download it now. `str()` is the CLI's message; the attributes let another front
    end (the web UI) say the same in its own words."""

    def __init__(self, *, repo_id: str, what: str, reason: str, files: str, download: str,
                 cache_dir: Path, endpoint: str, option: str = "--model") -> None:
        self.repo_id, self.what, self.reason, self.files = repo_id, what, reason, files
        self.download, self.cache_dir, self.endpoint = download, cache_dir, endpoint
        self.name = repo_id.rsplit("/", 1)[-1]
        command = download.format(repo=repo_id, name=self.name)
        super().__init__(
            f"could not download the {what} model {repo_id!r} (offline): it is not on this machine (not in the "
            f"Hugging Face cache {cache_dir}) and this machine cannot reach the Hugging Face hub ({self.host}): "
            f"{reason}. Pass a local folder with {option} (it must hold {files}); to make one, run "
            f"`{command}` on a computer with internet and copy that folder here. {offline_advice()}".rstrip())

    @property
    def host(self) -> str:
        """The hub's host name as users know it (huggingface.co, or the mirror's)."""
        return urllib.parse.urlsplit(self.endpoint).hostname or self.endpoint

    @property
    def page(self) -> str:
        """The model's page on the hub, where its files can be downloaded by hand."""
        return f"{self.endpoint}/{self.repo_id}"


@dataclass(frozen=True)
class ModelSource:
    """A resolved caption model: a local `folder`, or a hub `repo_id` (with its `cached` files
    when they are all in `cache_dir`, so no network is needed)."""

    folder: Path | None = None
    repo_id: str | None = None
    cached: tuple[Path, ...] = field(default_factory=tuple)
    cache_dir: Path | None = None

    @property
    def location(self) -> str:
        """What `from_pretrained` takes: the folder, or the hub id."""
        return str(self.folder) if self.folder is not None else str(self.repo_id)

    @property
    def local_only(self) -> bool:
        """No network for this source: a folder, or a hub id found in the cache."""
        return self.folder is not None or bool(self.cached)


def resolve_model_source(model: str, *, what: str, option: str = "--model") -> tuple[Path | None, str | None]:
    """(local folder, None) for an existing folder, (None, repo id) for a hub id, else an error.

    A path that does not exist and does not look like `org/name` is a typo'd folder, and saying
    so beats a confusing "repository not found" from the hub.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve(), None
    if path.exists():
        raise ModelLoadError(f"{option} {model!r} is a file; the {what} model is a folder "
                             "(or a Hugging Face repo id such as org/name)")
    if looks_like_hub_id(model):
        return None, model
    raise ModelLoadError(f"{option} {model!r}: no such folder; pass the folder holding the {what} model "
                         "or a Hugging Face repo id such as org/name")


def resolve_caption_model(model: str, *, what: str, needs: Sequence[str], files: str, download: str,
                          option: str = "--model") -> ModelSource:
    """The source of `model` (see the module docstring), or `ModelUnavailable` within about
    `HUB_PROBE_TIMEOUT` seconds. `needs` are the files that must be cached for a hub id to count
    as present; `files` and `download` describe a usable folder for the error message."""
    folder, repo_id = resolve_model_source(model, what=what, option=option)
    if folder is not None:
        return ModelSource(folder=folder)
    assert repo_id is not None
    cache_dir = hub_cache_dir()
    cached = cached_files(repo_id, needs, cache_dir)
    if cached:
        return ModelSource(repo_id=repo_id, cached=cached, cache_dir=cache_dir)
    reason = offline_reason()
    if reason is not None:
        raise ModelUnavailable(repo_id=repo_id, what=what, reason=reason, files=files, download=download,
                               cache_dir=cache_dir, endpoint=hub_endpoint(), option=option)
    return ModelSource(repo_id=repo_id, cache_dir=cache_dir)


def hub_error(repo_id: str, exc: BaseException, *, what: str, files: str, download: str) -> ModelLoadError:
    """The error for a model the hub was asked for and did not deliver: why, and how to use a
    local folder. `download` is the `hf download ...` command that makes such a folder while
    online, with `{repo}` and `{name}` (the repo's last part) filled in."""
    command = download.format(repo=repo_id, name=repo_id.rsplit("/", 1)[-1])
    mode = " (offline: only the local Hugging Face cache was searched)" if hub_offline() else ""
    reason = str(exc).strip().rstrip(".")
    return ModelLoadError(
        f"could not download the {what} model {repo_id!r} from the Hugging Face hub{mode}: "
        f"{type(exc).__name__}: {reason}. No local folder named {repo_id!r} exists either. "
        f"Pass a local folder with --model (it must hold {files}); to make one while online run "
        f"`{command}` and then use --model with that folder. {offline_advice()}".rstrip())

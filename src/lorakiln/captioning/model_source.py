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

The cache location and ``HF_HUB_OFFLINE`` / ``HF_ENDPOINT`` are read at call time, not at
import (huggingface_hub freezes its constants when imported), and the cache folder is passed
to every download call so the lookup and the loader agree.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lorakiln.errors import ModelLoadError
from lorakiln.models.hub_id import looks_like_hub_id

#: huggingface_hub's default endpoint (`constants.ENDPOINT` without ``HF_ENDPOINT``).
DEFAULT_ENDPOINT = "https://huggingface.co"
#: Seconds the reachability probe may take, DNS included; a reachable hub answers in well under 1 s.
HUB_PROBE_TIMEOUT = 3.0


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` read now, not at import (huggingface_hub freezes it when imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    """The hub's base URL: ``HF_ENDPOINT`` (a mirror) or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")


def hub_cache_dir() -> Path:
    """The hub cache folder, with huggingface_hub's precedence (`constants.HF_HUB_CACHE`):
    ``HF_HUB_CACHE``, the older ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME``/hub, then
    ``XDG_CACHE_HOME``/huggingface/hub or ~/.cache/huggingface/hub."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _ask(endpoint: str, timeout: float) -> None:
    """One HEAD request to the endpoint, as a download would make it: through the proxy from
    ``HTTPS_PROXY``/``NO_PROXY`` (urllib reads them as requests does) and with the certificate
    checked against certifi's roots (huggingface_hub's HTTP clients use them). Any HTTP answer,
    even an error status, means the hub is there; anything else raises."""
    import ssl

    context = None
    if endpoint.startswith("https:"):
        try:
            import certifi

            context = ssl.create_default_context(cafile=certifi.where())
        except ImportError:
            context = ssl.create_default_context()
    request = urllib.request.Request(f"{endpoint}/", method="HEAD", headers={"User-Agent": "lorakiln"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context):
            pass
    except urllib.error.HTTPError:
        pass  # the server answered: reachable


def hub_unreachable(endpoint: str | None = None, timeout: float | None = None) -> str | None:
    """None when the hub answers an HTTP(S) request within `timeout` seconds, else why not, in a
    few words. A TCP connection alone is not enough: a firewall that intercepts connections
    accepts them and then fails TLS, which huggingface_hub retries for minutes. Bounded as a
    whole, DNS included: the request runs in a thread that is waited for at most `timeout`."""
    timeout = HUB_PROBE_TIMEOUT if timeout is None else timeout
    endpoint = endpoint or hub_endpoint()
    host = urllib.parse.urlsplit(endpoint).netloc or endpoint
    outcome: dict[str, object] = {}

    def ask() -> None:
        try:
            _ask(endpoint, timeout)
            outcome["ok"] = True
        except Exception as exc:  # URLError, ssl.SSLError, OSError, ValueError (a malformed HF_ENDPOINT)...
            outcome["error"] = exc

    probe = threading.Thread(target=ask, name="lorakiln-hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    if outcome.get("ok"):
        return None
    error = outcome.get("error")
    reason = getattr(error, "reason", error)
    if error is None or isinstance(reason, TimeoutError):
        return f"no answer from {host} within {timeout:g} s"
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return f"no answer from {host} ({text})"


def offline_reason() -> str | None:
    """Why nothing may be downloaded now (offline mode, or the hub out of reach), or None."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set, so nothing is downloaded"
    return hub_unreachable()


def cached_files(repo_id: str, files: Sequence[str], cache_dir: Path) -> tuple[Path, ...]:
    """The cached copies of `files` of `repo_id` (main revision), or () unless all are cached."""
    from huggingface_hub import try_to_load_from_cache

    found = []
    for name in files:
        path = try_to_load_from_cache(repo_id, name, cache_dir=str(cache_dir))
        if not isinstance(path, str):  # None (not cached) or the "known missing" marker
            return ()
        found.append(Path(path))
    return tuple(found)


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
            f"`{command}` on a computer with internet and copy that folder here.")

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
        f"`{command}` and then use --model with that folder.")

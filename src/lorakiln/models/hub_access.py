"""Can the Hugging Face hub be reached now, and where is its local cache? Answered in seconds.

Handed a hub id on a machine without internet, huggingface_hub (and transformers and diffusers on
top of it) retries the hub for minutes before failing: a BLIP caption model took 3 min 55 s and
≈60 retry lines to say so. Every download of a model lorakiln makes (base models, VAEs, caption
models) therefore asks this module first:

* ``HF_HUB_OFFLINE`` (huggingface_hub's own switch) means only the local cache is searched;
* otherwise the hub endpoint (``HF_ENDPOINT``, through ``HTTPS_PROXY`` when set) must answer one
  HTTPS request within `HUB_PROBE_TIMEOUT` seconds, DNS included (the probe runs in a thread
  that is waited for at most that long), before a download is attempted.

`missing_repo` asks, in one more bounded request, whether the hub has a repo at all, so a
mistyped relative folder (`models/sd15` looks like `owner/name`) fails the dry run too.

The cache location and ``HF_HUB_OFFLINE`` / ``HF_ENDPOINT`` are read at call time, not at
import (huggingface_hub freezes its constants when imported), and callers pass the cache folder
to every download call so the lookup and the loader agree.

Torch-free and quick to import: `lorakiln train --dry-run` asks it too.
"""

from __future__ import annotations

import os
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEFAULT_ENDPOINT", "HUB_PROBE_TIMEOUT", "cached_files", "hub_cache_dir", "hub_endpoint",
           "hub_host", "hub_offline", "hub_unreachable", "missing_repo", "offline_advice", "offline_reason"]

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


def hub_host(endpoint: str | None = None) -> str:
    """The hub's host name as users know it (huggingface.co, or the mirror's)."""
    endpoint = endpoint or hub_endpoint()
    return urllib.parse.urlsplit(endpoint).hostname or endpoint


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


def _ssl_context(url: str) -> ssl.SSLContext | None:
    """For https: certificates checked against certifi's roots, as huggingface_hub's HTTP clients do."""
    if not url.startswith("https:"):
        return None
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


def _ask(endpoint: str, timeout: float) -> None:
    """One HEAD request to the endpoint, as a download would make it: through the proxy from
    ``HTTPS_PROXY``/``NO_PROXY`` (urllib reads them as requests does) and with the certificate
    checked (`_ssl_context`). Any HTTP answer, even an error status, means the hub is there;
    anything else raises."""
    request = urllib.request.Request(f"{endpoint}/", method="HEAD", headers={"User-Agent": "lorakiln"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_ssl_context(endpoint)):
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


def missing_repo(repo_id: str, timeout: float | None = None) -> str | None:
    """Why the hub has no model `repo_id` for this user ("HTTP 404" / "HTTP 401"), or None when it
    has one or the question cannot be answered in time. One request to the hub's model API
    (``/api/models/<repo_id>``, what `huggingface_hub.model_info` asks), with the user's token when
    one is saved (``HF_TOKEN`` or ``hf auth login``): without it the hub answers 401 for a private
    repo and for one that does not exist alike, and a download would fail in both cases. A gated
    repo answers 200 here (its card is public)."""
    timeout = HUB_PROBE_TIMEOUT if timeout is None else timeout
    headers = {"User-Agent": "lorakiln"}
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # no huggingface_hub, or an unreadable token file: ask anonymously
        token = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = f"{hub_endpoint()}/api/models/{urllib.parse.quote(repo_id)}"
    status: dict[str, int] = {}

    def ask() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD", headers=headers),
                                        timeout=timeout, context=_ssl_context(url)):
                status["code"] = 200
        except urllib.error.HTTPError as exc:
            status["code"] = exc.code
        except Exception:  # no answer: say nothing, the download will tell
            pass

    probe = threading.Thread(target=ask, name="lorakiln-hub-repo", daemon=True)
    probe.start()
    probe.join(timeout)
    code = status.get("code")
    return f"HTTP {code}" if code in (401, 404) else None


def offline_reason() -> str | None:
    """Why nothing may be downloaded now (offline mode, or the hub out of reach), or None."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set, so nothing is downloaded"
    return hub_unreachable()


def offline_advice() -> str:
    """The sentence that tells a user without internet how to skip the hub altogether, or ""
    when ``HF_HUB_OFFLINE`` is already set. huggingface_hub, transformers and diffusers all honour
    the variable, so it also keeps other tools from retrying the hub for minutes."""
    if hub_offline():
        return ""
    return ("On a machine without internet, set HF_HUB_OFFLINE=1 (e.g. `export HF_HUB_OFFLINE=1`): lorakiln and "
            "huggingface_hub then use only the local cache and never wait for the hub.")


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

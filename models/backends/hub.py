"""Hugging Face Hub helpers shared by the hub-backed backends (open_clip `hf-hub:` ids and
transformers CLIP ids): is the hub offline right now, what is already in the local cache, and
one explicit `ModelUnavailableError` that says how to provide weights when they are missing."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator

from models.backends.base import ModelUnavailableError

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether the hub must not be contacted: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now.

    huggingface_hub reads these once, at import; reading the environment here makes a setting
    made later (by settings code or a test) count as well.
    """
    from huggingface_hub import constants

    env = _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def offline_guard(offline: bool) -> Iterator[None]:
    """While loading, make huggingface_hub (and transformers, which asks it) refuse the network.

    Needed when HF_HUB_OFFLINE was set after huggingface_hub was imported: its constant, which
    every download consults, would otherwise still say "online".
    """
    if not offline:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def cached_hub_file(repo_id: str, filename: str, revision: str | None = None) -> str | None:
    """The path of `filename` from `repo_id` in the local HF cache, or None (never the network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo_id, filename, revision=revision)
    except ValueError:  # malformed repo id
        return None
    return path if isinstance(path, str) else None


def first_cached(repo_id: str, filenames: Iterable[str]) -> str | None:
    """The first of `filenames` that the local HF cache holds for `repo_id`."""
    for name in filenames:
        path = cached_hub_file(repo_id, name)
        if path:
            return path
    return None


def loading_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "these weights cannot be had", to be wrapped in ModelUnavailableError."""
    errors: list[type[BaseException]] = [OSError, RuntimeError, ValueError]
    with contextlib.suppress(ImportError):
        from huggingface_hub import errors as hub_errors

        errors += [
            hub_errors.HfHubHTTPError,
            hub_errors.LocalEntryNotFoundError,
            hub_errors.OfflineModeIsEnabled,
        ]
    with contextlib.suppress(ImportError):
        import httpx

        errors.append(httpx.HTTPError)
    with contextlib.suppress(ImportError):
        import requests

        errors.append(requests.RequestException)
    return tuple(errors)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One quick request to the hub endpoint (proxies honoured, no retries): can downloads work?"""
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout)
    except (httpx.HTTPError, OSError):
        return False
    return True


def hub_blocked() -> str | None:
    """None when the hub may be used now; otherwise why not (offline setting, or unreachable).

    Probing first matters: huggingface_hub retries a dead network for about 25 s per file.
    """
    if hub_offline():
        return "HF_HUB_OFFLINE is set, so the hub was not contacted"
    if not hub_reachable():
        from huggingface_hub import constants

        return f"the Hugging Face Hub ({constants.ENDPOINT}) is unreachable"
    return None


class HubAccess:
    """Whether this load may use the hub, asked at most once and only when the hub is needed."""

    def __init__(self) -> None:
        self._asked = False
        self._why: str | None = None

    @property
    def why(self) -> str | None:
        """None when the hub can be used; otherwise the reason it cannot."""
        if not self._asked:
            self._why, self._asked = hub_blocked(), True
        return self._why

    @property
    def offline(self) -> bool:
        return self.why is not None


def unavailable(
    model: str, problem: str, *, why: str | None = None, repo: str | None = None, hint: str | None = None
) -> ModelUnavailableError:
    """A `ModelUnavailableError` naming the model, what is wrong, why, and how to provide the weights."""
    if hint is None:
        local = (
            "point the model spec at local weights instead (open_clip: ARCH + a weights file, or a "
            "`local-dir:/path` folder holding open_clip_config.json + weights; transformers: a "
            "save_pretrained folder)"
        )
        hint = (
            f"On a connected machine run `hf download {repo}` (or load the model once) to fill the Hugging "
            "Face cache (HF_HOME, default ~/.cache/huggingface) and copy that cache here, or " + local
            if repo
            else local[0].upper() + local[1:]
        )
    reason = f" ({why})" if why else ""
    return ModelUnavailableError(f"Model {model!r} is unavailable: {problem}{reason}. {hint}.")

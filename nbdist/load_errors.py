"""Why a model did not load, in one line with the fix.

``DiffusionPipeline.from_pretrained`` rarely raises the error that says why: diffusers 0.42 swallows the
hub's answer (``model_info`` failing on a gated repo, a wrong id or revision, no network), retries from
the local cache, and raises a generic ``OSError`` "not fully cached locally" whose ``__cause__`` is the
real reason. A generic "offline, or no such model?" then sends a user with a gated model, a typo or a
full disk down the wrong road. This module walks the whole cause/context chain and names the first
reason it recognises, using huggingface_hub's own error types (never message guessing, except for
diffusers' variant error, which is a plain ``ValueError``).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

from .options import NbdistUsageError

__all__ = ["explain_load_error"]

_LOCAL_HINT = "or pass a local folder saved with save_pretrained, e.g. --model ./my-sd-model"


def explain_load_error(
    model: str, exc: BaseException, *, variant: str | None = None, revision: str | None = None
) -> NbdistUsageError | None:
    """The one-line ``NbdistUsageError`` for a load failure whose cause is known, else ``None``.

    Checked from the most specific cause to the least: a gated repo is also a "repository not found"
    for huggingface_hub, and every hub answer diffusers swallows comes wrapped with a "not cached"
    ``LocalEntryNotFoundError`` in the same chain, so offline is only concluded when nothing more
    precise is there. The caller raises the result ``from exc`` so the full chain stays inspectable.
    """
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    chain = list(_chain(exc))
    if _has(chain, GatedRepoError):
        return NbdistUsageError(
            f"{model!r} is a gated model: accept its licence on https://huggingface.co/{model}, "
            "then log in with `hf auth login` (or set HF_TOKEN)"
        )
    if _has(chain, RepositoryNotFoundError):
        return NbdistUsageError(
            f"no model {model!r} on the model hub: check the id (a private model needs `hf auth login` or HF_TOKEN)"
        )
    if _has(chain, RevisionNotFoundError):
        return NbdistUsageError(
            f"{model!r} has no revision {revision!r}: check the branch, tag or commit name given to --revision"
        )
    if any(_out_of_disk(e) for e in chain):
        return _disk_full(model)
    if variant is not None and any(_no_variant_files(e, variant) for e in chain):
        return NbdistUsageError(f"{model!r} has no --variant {variant} files: drop --variant {variant}")
    if _has(chain, _network_errors()):
        return _offline(model)
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception behind it (``__cause__`` and ``__context__``), each once.

    Both links matter: diffusers raises its "not cached" ``OSError`` ``from`` the hub error, while the
    ``LocalEntryNotFoundError`` it was handling sits in ``__context__``.
    """
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _has(chain: list[BaseException], kind: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    return any(isinstance(e, kind) for e in chain)


def _no_variant_files(exc: BaseException, variant: str) -> bool:
    """diffusers' own ``ValueError`` (local folder and hub alike): "... `variant=fp16`, but no such modeling
    files are available"; it has no type of its own, so its words are the only signal."""
    text = str(exc)
    return f"variant={variant}" in text and "no such modeling files" in text


def _out_of_disk(exc: BaseException) -> bool:
    """ENOSPC from a plain write, or its text from a download backend that re-raises it as another type."""
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)


def _disk_full(model: str) -> NbdistUsageError:
    from huggingface_hub import constants

    return NbdistUsageError(
        f"the disk filled up while downloading {model!r} into {constants.HF_HUB_CACHE}: free space there, "
        "or set HF_HOME to a folder on a bigger disk before starting the kernel"
    )


def _offline(model: str) -> NbdistUsageError:
    """No answer from the hub and nothing cached: say whether offline mode was asked for, since then
    the fix is to unset it, not to check the network."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return NbdistUsageError(
            f"offline mode is on (HF_HUB_OFFLINE=1) and {model!r} is not in the local cache: "
            f"unset HF_HUB_OFFLINE to download it, {_LOCAL_HINT}"
        )
    return NbdistUsageError(
        f"could not reach the model hub (offline?) and {model!r} is not in the local cache: "
        f"check the network, {_LOCAL_HINT}"
    )


def _network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the hub could not be asked": huggingface_hub's own, and the transport
    errors of every HTTP client it may use (httpx2 in huggingface_hub 1.x/2.x, requests before)."""
    import socket

    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    kinds: list[type[BaseException]] = [
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        ConnectionError,
        TimeoutError,
        socket.gaierror,
    ]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            kinds.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(kinds)

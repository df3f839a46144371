"""Installed distributions' versions, read from their metadata (imports nothing): the one place
profiles, search runs, graph caches, manifests and backend plugins look versions up."""

from __future__ import annotations


def dist_versions(*names: str) -> dict[str, str]:
    """Installed versions of distributions; one that is not installed is left out."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            pass
    return out

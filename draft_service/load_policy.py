"""What ``LoadDrafter`` may build at run time.

The drafters given at start-up are the operator's choice. A drafter loaded later through the
admin API reads files and may hold gigabytes (a ``model:`` drafter is a whole causal LM), so a
caller holding the admin key must not be able to point the service at any file it can read, nor
fill its memory by loading one drafter under many names. So, at run time:

- kinds that read no file (``ngram``, ``suffix``) are always allowed;
- ``model:`` and ``eagle:`` specs must name a start-up spec's model or head, a head shipped with
  specgrove, or a name or path on the allow-list (``--allow-drafter``; a directory allows
  everything under it);
- at most ``max_drafters`` drafters are loaded at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specgrove.errors import PermissionDenied, ResourceExhausted

FILELESS_KINDS = ("ngram", "suffix")


def _as_path(text: str) -> Path:
    return Path(text).expanduser().resolve()


@dataclass(frozen=True)
class LoadPolicy:
    allowed: tuple[str, ...] = ()  # model / head names, files or directories
    max_drafters: int = 8

    def with_startup(self, specs: tuple[str, ...]) -> "LoadPolicy":
        """This policy also allowing what the start-up specs name (reloading them works)."""
        args = tuple(arg for spec in specs for kind, _, arg in [spec.partition(":")]
                     if kind not in FILELESS_KINDS and arg)
        return LoadPolicy(self.allowed + args, self.max_drafters)

    def check(self, spec: str, loaded: int) -> None:
        """Raise unless ``spec`` may be loaded now, with ``loaded`` drafters already held."""
        if loaded >= self.max_drafters:
            raise ResourceExhausted(f"{loaded} drafters are loaded, the most this service holds "
                                    f"(--max-drafters {self.max_drafters}); unload one first")
        kind, _, arg = spec.partition(":")
        if kind in FILELESS_KINDS or not arg or self._allows(kind, arg):
            return  # an unknown kind or a missing argument is the builder's error to report
        raise PermissionDenied(
            f"spec: {spec!r} is not on the draft service's load allow-list; start it with "
            f"--allow-drafter {arg} (or a directory above it) to load it at run time")

    def _allows(self, kind: str, arg: str) -> bool:
        from draft_service.factory import shipped_head

        if kind == "eagle" and shipped_head(arg) is not None:
            return True
        if arg in self.allowed:
            return True
        path = _as_path(arg)
        for entry in self.allowed:
            root = _as_path(entry)
            if path == root or root in path.parents:
                return True
        return False

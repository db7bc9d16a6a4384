"""The drafter registry: load, list and unload drafters while sequences are in flight.

Swaps are copy-on-write (a new dict replaces the old one), so a ``propose`` running on the
engine thread keeps the drafters it started with and never sees a half-updated registry. A
sequence that names a drafter which was since unloaded continues on the default drafter; a name
that was never loaded is a caller error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from draft_service.drafters.base import Drafter
from specgrove.errors import InvalidRequest
from specgrove.types import DrafterInfo


def _cannot_build(spec: str) -> Drafter:
    raise InvalidRequest("spec", f"this registry was given fixed drafters and cannot build {spec!r}")


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    spec: str
    drafter: Drafter


class DrafterRegistry:
    def __init__(self, build: Callable[[str], Drafter]) -> None:
        self._build = build  # spec ("ngram", "model:PATH") -> drafter; may take seconds
        self._entries: dict[str, RegistryEntry] = {}
        self._retired: set[str] = set()
        self.default = ""

    @staticmethod
    def of(drafters: dict[str, Drafter], default: str) -> "DrafterRegistry":
        """A registry over drafters built elsewhere (in-process use, tests)."""
        reg = DrafterRegistry(_cannot_build)
        for name, drafter in drafters.items():
            reg.add(RegistryEntry(name, drafter.kind, drafter), make_default=name == default)
        if default not in drafters:
            raise ValueError(f"default drafter {default!r} is not among {sorted(drafters)}")
        return reg

    def build(self, name: str, spec: str) -> RegistryEntry:
        """Construct a drafter (slow, off the event loop); ``add`` publishes it."""
        if not name or "=" in name:
            raise InvalidRequest("name", f"bad drafter name {name!r}")
        return RegistryEntry(name, spec, self._build(spec))

    def add(self, entry: RegistryEntry, make_default: bool = False) -> DrafterInfo:
        self._entries = {**self._entries, entry.name: entry}
        self._retired.discard(entry.name)
        if make_default or not self.default:
            self.default = entry.name
        return self.info(entry.name)

    def remove(self, name: str) -> RegistryEntry:
        if name not in self._entries:
            raise InvalidRequest("name", f"no drafter named {name!r} is loaded")
        if name == self.default:
            raise InvalidRequest("name", f"{name!r} is the default drafter; load another default first")
        entries = dict(self._entries)
        entry = entries.pop(name)
        self._entries = entries
        self._retired.add(name)
        return entry

    def resolve(self, name: str) -> RegistryEntry:
        """The entry that drafts for ``name`` ("" or an unloaded name -> the default)."""
        entries = self._entries
        if not name or (name in self._retired and name not in entries):
            return entries[self.default]
        if name not in entries:
            raise InvalidRequest("drafter", f"unknown drafter {name!r}; loaded: {sorted(entries)}")
        return entries[name]

    def entries(self) -> list[RegistryEntry]:
        return list(self._entries.values())

    def info(self, name: str) -> DrafterInfo:
        e = self._entries[name]
        layers = tuple(getattr(e.drafter, "feature_layers", ()))
        stats = getattr(e.drafter, "stats", None)  # drafters that learn across requests
        return DrafterInfo(e.name, e.drafter.kind, e.spec, e.name == self.default, layers,
                           dict(stats()) if stats is not None else {})

    def list(self) -> list[DrafterInfo]:
        return [self.info(name) for name in sorted(self._entries)]

"""Where instances of a class of the project may be: which modules a search for the callers of
one of its methods must read.

A method's call sites are calls whose receiver may be an instance of the class. The value-flow
engine decides that for each call it reads, but reading every module that spells the method's
name is out of reach in a large project (diffusers spells ``encode_prompt`` in hundreds of
pipelines, each calling its own). The project index answers first, from the modules' ``ast``
summaries, which modules may hold an instance:

- those that define a class of the *family*: the class, its subclasses (their instances are its
  instances), and its bases (whose ``self.m(...)`` runs the class's override);
- those that use a *member* by name (they build instances) or a *holder*: a class whose body
  builds a member (the instance is one of its attributes, ``metrics.losses_track``), or a
  top-level function of a module that uses a member (it may return one);
- those that define a *receiver*: a function that a module using a member imports (the instance
  may be passed to it, ``encode_data(model, loader)``).

An instance that travels further (through two functions of modules that never name it) is not
followed, as a receiver the engine cannot follow is not.

API (``families = project.families``): ``families.of(qualified, importer)`` (the family of a
class, None for a name that is not a class of the project), ``families.may_hold(summary,
family)``; ``family.words`` (what the text of such a module spells, for a cheap first pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainlint.module_summary import ModuleSummary
    from trainlint.project import ProjectIndex

Key = tuple[str, str]  # (module, class or function name), where it is defined
_MAX_FAMILY = 64  # classes of one family looked for


@dataclass(frozen=True)
class ClassFamily:
    members: frozenset[Key]  # the class and its subclasses
    bases: frozenset[Key]  # its bases defined in the project
    holders: frozenset[Key]  # classes that build a member, functions of modules that use one
    receivers: frozenset[Key]  # functions that modules using a member import
    sources: tuple[ModuleSummary, ...]  # the summaries the family was read from

    @property
    def member_names(self) -> frozenset[str]:
        return frozenset(_tail(attr) for _, attr in self.members)

    @property
    def words(self) -> tuple[str, ...]:
        """What the text of a module that may hold an instance spells: a member's or a holder's
        name, a receiver's name (it defines it), or ``class Base`` (a base's definition)."""
        names = {_tail(attr) for _, attr in (*self.members, *self.holders, *self.receivers)}
        return (*sorted(names), *sorted(f"class {_tail(attr)}" for _, attr in self.bases))


class ClassFamilies:
    """The families of the project's classes, computed once per run (``project.families``)."""

    def __init__(self, project: ProjectIndex) -> None:
        self.project = project
        self._families: dict[Key, ClassFamily] = {}

    def of(self, qualified: str, importer: Path | None) -> ClassFamily | None:
        found = self.project.definition(qualified, importer)
        if found is None or found[1] not in found[0].classes:
            return None
        key = (found[0].name, found[1])
        family = self._families.get(key)
        if family is None:
            family = self._families[key] = self._family(*found)
        for summary in family.sources:
            self.project.consult(summary)
        return family

    def may_hold(self, summary: ModuleSummary, family: ClassFamily) -> bool:
        """The module defines a class of the family or a receiver, or uses a member or a holder."""
        defined = [(summary.name, name) for name in (*summary.classes, *summary.functions)]
        if any(key in family.members or key in family.bases or key in family.receivers for key in defined):
            return True
        return self._uses(summary, family.members | family.holders)

    # -- building a family ----------------------------------------------------------------------
    def _family(self, summary: ModuleSummary, name: str) -> ClassFamily:
        sources: dict[Path, ModuleSummary] = {summary.path: summary}
        bases = self._bases_of(summary, name, sources)
        members = self._subclasses_of(summary, name, sources)
        holders: set[Key] = set()
        receivers: set[Key] = set()
        for module, attr in members:
            for user in self._modules_using(module, attr, members):
                sources[user.path] = user
                holders.update((user.name, c) for c, cls in user.classes.items() if self._builds(user, cls.calls, members))
                holders.update((user.name, f) for f in user.functions)
                receivers.update(self._imported_functions(user))
        return ClassFamily(members, bases, frozenset(holders), frozenset(receivers), tuple(sources.values()))

    def _bases_of(self, summary: ModuleSummary, name: str, sources: dict[Path, ModuleSummary]) -> frozenset[Key]:
        found: set[Key] = set()
        stack = [(summary, name)]
        while stack and len(found) < _MAX_FAMILY:
            module, attr = stack.pop()
            for base in module.classes[attr].bases:
                definition = self.project.definition(base, module.path)
                if definition is None or definition[1] not in definition[0].classes:
                    continue
                key = (definition[0].name, definition[1])
                if key not in found:
                    found.add(key)
                    sources[definition[0].path] = definition[0]
                    stack.append(definition)
        return frozenset(found)

    def _subclasses_of(self, summary: ModuleSummary, name: str, sources: dict[Path, ModuleSummary]) -> frozenset[Key]:
        """The class and the project's classes deriving from it, transitively: a subclass's
        module spells its base's name (and imports it, unless it is the same module)."""
        members = {(summary.name, name)}
        frontier = [(summary, name)]
        while frontier and len(members) < _MAX_FAMILY:
            module, attr = frontier.pop()
            for other in [module, *self.project.modules_importing(module.name, _tail(attr))]:
                for derived, cls in other.classes.items():
                    key = (other.name, derived)
                    if key not in members and any(self._key(b, other.path) == (module.name, attr) for b in cls.bases):
                        members.add(key)
                        frontier.append((other, derived))
                        sources[other.path] = other
        return frozenset(members)

    def _modules_using(self, module: str, attr: str, members: frozenset[Key]) -> list[ModuleSummary]:
        """The modules that call or reference a member (not a package that only re-exports it)."""
        own = self.project.module(module)
        found = [own] if own is not None else []
        found += self.project.modules_importing(module, _tail(attr))
        unique = {user.path: user for user in found}
        return [user for user in unique.values() if self._uses(user, members)]

    def _uses(self, summary: ModuleSummary, keys: frozenset[Key]) -> bool:
        names = {_tail(attr) for _, attr in keys}
        return any(
            not used.startswith(".") and _tail(used) in names and self._key(used, summary.path) in keys
            for used in (*summary.calls, *summary.references)
        )

    def _builds(self, summary: ModuleSummary, calls: set[str], members: frozenset[Key]) -> bool:
        names = {_tail(attr) for _, attr in members}
        return any(_tail(call) in names and self._key(call, summary.path) in members for call in calls)

    def _imported_functions(self, summary: ModuleSummary) -> list[Key]:
        found = []
        for qualified in summary.imports.values():
            definition = self.project.definition(qualified, summary.path)
            if definition is not None and definition[1] in definition[0].functions and definition[0] is not summary:
                found.append((definition[0].name, definition[1]))
        return found

    def _key(self, qualified: str, importer: Path | None) -> Key | None:
        found = self.project.definition(qualified, importer)
        if found is None:
            return None
        module, attr = found
        return (module.name, attr) if attr in module.classes or attr in module.functions else None


def _tail(name: str) -> str:
    return name.rpartition(".")[2]

"""One registry type for everything ocbench finds by name: backbones, tasks, datasets, schema upgraders.

A :class:`Registry` maps names to objects. An entry may be the object itself or a lazy reference
``"package.module:attribute"`` that is imported on first lookup, so registering costs nothing and
an optional dependency of one task is imported only when that task is used. Unknown names raise a
one-line :class:`~ocbench.errors.ConfigError` with the closest names ("did you mean"); registering
a name twice with a different object is refused.

Third-party packages add entries through Python entry points: a registry with ``entry_point_group``
(``ocbench.backbones``, ``ocbench.tasks``, ``ocbench.datasets``) loads that group on first use. An
entry point's value is either the object to register (its name is the entry point's name) or a
module whose import registers its objects itself. A user's own module is imported for one command
with ``ocbench --plugin MODULE`` (see :func:`load_plugin`).

This module imports only the standard library.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from typing import Any, Callable, Generic, Iterator, TypeVar

from ocbench.errors import ConfigError

__all__ = ["Registry", "load_plugin", "resolve_reference"]

T = TypeVar("T")


def resolve_reference(reference: str, *, what: str = "object") -> Any:
    """Import ``"package.module:attribute"`` (dotted attributes allowed) and return the attribute."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{what} reference {reference!r} is not 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {reference!r}: cannot import {module_name} ({exc}); install what it needs") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{what} {reference!r}: {module_name} has no attribute {attribute!r}") from None
    return obj


def _reference_of(obj: Any) -> str | None:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else None


class Registry(Generic[T]):
    """Named objects of one kind, with lazy entries, did-you-mean errors and duplicate refusal.

    ``kind`` names the kind in messages ("backbone", "task"). ``check(obj)`` validates an object when
    it is registered (eager entries) or first loaded (lazy ones). ``list_command`` is the command that
    lists the names, quoted in errors. ``on_first_use`` runs once before the first lookup (it
    registers the built-in entries, so importing a registry module stays cheap).
    """

    def __init__(
        self,
        kind: str,
        *,
        entry_point_group: str | None = None,
        check: Callable[[Any], Any] | None = None,
        list_command: str | None = None,
        on_first_use: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._check = check
        self._list_command = list_command
        self._on_first_use = on_first_use
        self._entries: dict[str, Any] = {}  # name -> object or "module:attr" string
        self._loaded: dict[str, bool] = {}
        self._started = False
        self._builtin: frozenset[str] = frozenset()

    # -- registration ---------------------------------------------------------------------------
    def register(self, name: str, obj: T | str, *, overwrite: bool = False) -> T | str:
        """Add ``obj`` (or a lazy ``"module:attr"`` reference) under ``name``; returns ``obj``.

        Registering the same object (or the same reference) again is a no-op; another object under
        a taken name is refused unless ``overwrite``.
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind} names must be non-empty strings, got {name!r}")
        lazy = isinstance(obj, str)
        if not lazy and self._check is not None:
            self._check(obj)
        if name in self._entries and not overwrite:
            existing = self._entries[name]
            if existing is obj or existing == obj:
                return obj
            if not self._loaded[name] and not lazy and existing == _reference_of(obj):
                self._entries[name], self._loaded[name] = obj, True  # the lazy entry's module was imported
                return obj
            raise ConfigError(f"{self.kind} {name!r} is already registered with a different definition; pick another name")
        self._entries[name] = obj
        self._loaded[name] = not lazy
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (no error when absent); for tests and plugins that replace an entry."""
        self._entries.pop(name, None)
        self._loaded.pop(name, None)

    # -- lookup -----------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._on_first_use is not None:
            self._on_first_use()
        self._builtin = frozenset(self._entries)  # what ocbench itself registered (named in plugin warnings)
        if self.entry_point_group:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        """Register each entry point's object; every problem with one plugin is one warning that says
        what happened to it (a broken plugin must not break every command)."""
        import warnings
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.entry_point_group):
            plugin = f"plugin {ep.value!r} ({self.entry_point_group} entry point {ep.name!r})"
            try:
                obj = ep.load()
                if type(obj).__name__ == "module":  # a module registers its objects itself
                    continue
                name, note = self._plugin_name(ep.name, obj)
                if name in self._entries and not (self._entries[name] is obj or self._entries[name] in (obj, _reference_of(obj))):
                    taken = "a built-in" if name in self._builtin else "an already registered"
                    message = f"{plugin} is ignored: {name!r} is {taken} {self.kind}{note}; give the plugin's {self.kind} another name"
                else:
                    self.register(name, obj)
                    message = f"{plugin} is registered as {name!r}{note}; name the entry point {name!r}" if note else ""
            except Exception as exc:
                message = f"{plugin} failed to load: {type(exc).__name__}: {exc}; fix or uninstall it"
            if message:
                warnings.warn(message, stacklevel=3)

    def _plugin_name(self, entry_point_name: str, obj: Any) -> tuple[str, str]:
        """``(name to register obj under, a note for the warning when that is not the entry point's name)``."""
        return entry_point_name, ""

    def __contains__(self, name: object) -> bool:
        self._start()
        return name in self._entries

    def names(self) -> list[str]:
        """Registered names in registration order."""
        self._start()
        return list(self._entries)

    def get(self, name: str) -> T:
        """The object registered as ``name`` (importing a lazy entry now); ConfigError if unknown."""
        self._start()
        try:
            obj = self._entries[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None
        if not self._loaded[name]:
            obj = resolve_reference(obj, what=f"{self.kind} {name!r}")
            if self._check is not None:
                self._check(obj)
            self._entries[name] = obj
            self._loaded[name] = True
        return obj

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, object)`` for every entry, loading lazy ones."""
        for name in self.names():
            yield name, self.get(name)

    def unknown(self, name: object, *, extra: str = "") -> ConfigError:
        """The error for an unknown name: closest names, or the list of known ones."""
        names = list(self._entries)
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        where = f" (see: {self._list_command})" if self._list_command else ""
        if close:
            return ConfigError(f"unknown {self.kind} {str(name)!r}; did you mean: {', '.join(close)}?{extra}")
        known = ", ".join(names) if names else "none registered"
        return ConfigError(f"unknown {self.kind} {str(name)!r}; known: {known}{where}{extra}")

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def load_plugin(module: str) -> None:
    """Import a user's module (``--plugin MODULE``) so that it registers its backbones, tasks or datasets.

    ``MODULE`` is an importable name (``mylab_cards``) or a path to a ``.py`` file.
    """
    import sys
    from pathlib import Path

    path = Path(module)
    if module.endswith(".py"):
        if not path.is_file():
            raise ConfigError(f"--plugin {module}: no such file")
        name = f"ocbench_plugin_{path.stem}"
        loaded = sys.modules.get(name)
        if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path.resolve():
            return  # already imported in this process: its objects are registered
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"--plugin {module}: cannot load it as a Python module")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except ConfigError:
            raise
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ConfigError(f"--plugin {module}: importing it failed ({type(exc).__name__}: {exc})") from None
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):  # not a module it imports
            raise ConfigError(
                f"--plugin {module}: no module named {module!r}; install it or pass a path to a .py file"
            ) from None
        raise ConfigError(f"--plugin {module}: importing it failed ({exc})") from None
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"--plugin {module}: importing it failed ({type(exc).__name__}: {exc})") from None

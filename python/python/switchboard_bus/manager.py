"""``PluginManager``: loads plugins from modules or files, unloads them, and
reloads their code from disk with an exactly-once hand-over."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import importlib.util
import logging
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Type, Union

from .event_bus import _IN_DISPATCH, _TEARDOWN_SCOPE, EventBus
from .plugin import Plugin, _Handover

__all__ = ["PluginError", "PluginManager"]

Source = Union[str, "os.PathLike[str]", types.ModuleType]


class PluginError(Exception):
    """A plugin could not be loaded, unloaded or reloaded (the reason is chained)."""


@dataclass
class _Origin:
    """Where a plugin's code comes from: a module name or a file."""

    module_name: str
    path: Optional[Path]
    config: Optional[Dict[str, Any]]

    def fresh_module(self) -> types.ModuleType:
        """The plugin's module, executed again from its source on disk (never
        from a cached ``.pyc``, which a same-second edit could leave stale)."""
        path = self.path
        if path is None:
            spec = importlib.util.find_spec(self.module_name)
            if spec is None or spec.origin is None or not spec.has_location:
                raise PluginError(f"cannot find the source of module {self.module_name!r}")
            path = Path(spec.origin)
        else:
            spec = importlib.util.spec_from_file_location(self.module_name, path)
        source = path.read_bytes()
        module = types.ModuleType(self.module_name)
        module.__file__ = str(path)
        module.__spec__ = spec
        module.__package__ = self.module_name.rpartition(".")[0]
        code = compile(source, str(path), "exec")
        previous = sys.modules.get(self.module_name)
        sys.modules[self.module_name] = module
        try:
            exec(code, module.__dict__)
        except BaseException:
            if previous is not None:
                sys.modules[self.module_name] = previous
            else:
                del sys.modules[self.module_name]
            raise
        return module


def _plugin_class(module: types.ModuleType) -> Type[Plugin]:
    """The module's ``plugin_class``, else the one ``Plugin`` subclass it defines."""
    chosen = getattr(module, "plugin_class", None)
    if chosen is not None:
        if not (isinstance(chosen, type) and issubclass(chosen, Plugin)):
            raise PluginError(f"{module.__name__}.plugin_class is not a Plugin subclass: {chosen!r}")
        return chosen
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, Plugin) and v is not Plugin and v.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = ", ".join(c.__name__ for c in found) or "none"
        raise PluginError(
            f"module {module.__name__!r} must define exactly one Plugin subclass "
            f"(or name one as plugin_class); found {names}"
        )
    return found[0]


class _Bot:
    """The ``bot`` a manager gives its plugins when it was given none."""

    def __init__(self, manager: "PluginManager") -> None:
        self.plugin_manager = manager


class PluginManager:
    """Loads, unloads and hot-reloads plugins on one event bus.

    Args:
        bot: What plugins get as ``bot`` (its ``plugin_manager`` is set to
            this manager if it has none); a stand-in when ``None``
        event_bus: The bus (a new ``EventBus`` when ``None``)

    ``reload(name)`` executes the plugin's module again from its file and
    builds a fresh instance, which subscribes while the old one still runs;
    each subscription of the new instance takes over the old instance's
    subscription of the same role (pattern and ordinal) at its seam, so every
    event either instance would get is handled exactly once. Use the manager
    from one event loop. Concurrent reloads of one plugin run one after the
    other; a load of a name whose load is still in ``setup`` fails as a load
    of a loaded name does.
    """

    def __init__(self, bot: Any = None, event_bus: Optional[EventBus] = None) -> None:
        self.event_bus = event_bus if event_bus is not None else EventBus()
        self.bot: Any = bot if bot is not None else _Bot(self)
        if getattr(self.bot, "plugin_manager", None) is None:
            self.bot.plugin_manager = self
        self.plugins: Dict[str, Plugin] = {}
        self._origins: Dict[str, _Origin] = {}
        # Names whose load is in setup, and each name's reload lock.
        self._loading: Set[str] = set()
        self._reloading: Dict[str, asyncio.Lock] = {}
        # Teardowns of replaced instances waiting for their last events (a
        # reload from inside a handler).
        self._retiring: Set["asyncio.Future[None]"] = set()
        self.logger = logging.getLogger("plugin.manager")

    def _origin(self, source: Source, config: Optional[Dict[str, Any]]) -> _Origin:
        if isinstance(source, types.ModuleType):
            path = getattr(source, "__file__", None)
            return _Origin(source.__name__, Path(path) if path else None, config)
        if isinstance(source, os.PathLike) or (isinstance(source, str) and source.endswith(".py")):
            path = Path(os.fspath(source)).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"no plugin file at {str(path)!r}")
            return _Origin(f"switchboard_plugins_{path.stem}", path, config)
        if isinstance(source, str):
            return _Origin(source, None, config)
        raise TypeError(f"source must be a module, a module name or a .py path, not {type(source).__name__}: {source!r}")

    async def load(self, source: Source, config: Optional[Dict[str, Any]] = None) -> Plugin:
        """Imports the plugin's module (a module, a dotted module name or a
        ``.py`` path), builds the plugin and runs its ``setup``. A failed
        ``setup`` leaves no subscription behind.

        Raises:
            PluginError: no plugin class, a name already loaded, a failed ``setup``
        """
        origin = self._origin(source, config)
        if isinstance(source, types.ModuleType):
            module = source
        elif origin.path is not None:
            module = origin.fresh_module()
        else:
            module = importlib.import_module(origin.module_name)
        plugin = _plugin_class(module)(self.bot, config)
        name = plugin.metadata.name
        if name in self.plugins or name in self._loading:
            raise PluginError(f"a plugin named {name!r} is already loaded")
        # Taken before the first await: a second load of the name meanwhile
        # fails above instead of setting up a second live instance.
        self._loading.add(name)
        try:
            await plugin.setup()
        except Exception as e:
            await self._discard(plugin)
            raise PluginError(f"setup of plugin {name!r} failed: {e}") from e
        finally:
            self._loading.discard(name)
        self.plugins[name] = plugin
        self._origins[name] = origin
        self.logger.info(f"loaded plugin {name}")
        return plugin

    async def _discard(self, plugin: Plugin) -> None:
        for sub in plugin._subscription_handles:
            sub.unsubscribe()
        plugin._subscription_handles.clear()
        plugin._event_subscriptions.clear()

    def _get(self, name: str) -> Plugin:
        if not isinstance(name, str):
            raise TypeError(f"plugin name must be a str, not {type(name).__name__}: {name!r}")
        try:
            return self.plugins[name]
        except KeyError:
            raise PluginError(f"no plugin named {name!r} is loaded") from None

    async def unload(self, name: str) -> None:
        """Runs the plugin's ``teardown`` and removes every subscription it
        made, whatever ``teardown`` does."""
        plugin = self._get(name)
        del self.plugins[name]
        del self._origins[name]
        try:
            await plugin.teardown()
        finally:
            await self._discard(plugin)
        self.logger.info(f"unloaded plugin {name}")

    async def reload(self, name: str) -> Plugin:
        """Re-executes the plugin's module from disk, builds a fresh instance,
        sets it up while the old one still runs, hands every subscription over
        at its seam, then tears the old instance down. No event is lost or
        handled twice across it.

        A failure (the module does not execute, no plugin class, another name,
        a failed ``setup``) keeps the old instance running, still exactly once.

        Concurrent reloads of one plugin run one after the other, each
        replacing the instance the one before it left. From inside a handler
        run by ``publish_nowait``'s dispatcher, the old instance is torn down
        after this returns, once the events queued for it have run.

        Raises:
            PluginError: as above, with the reason chained; also a reload from
                inside a handler while another reload of the plugin runs (it
                would wait for a flush that waits for that handler)
        """
        self._get(name)
        lock = self._reloading.setdefault(name, asyncio.Lock())
        if lock.locked() and _IN_DISPATCH.get() is not None:
            raise PluginError(f"a reload of plugin {name!r} is in progress")
        async with lock:
            return await self._reload(name)

    async def _reload(self, name: str) -> Plugin:
        old = self._get(name)
        origin = self._origins[name]
        bus = self.event_bus
        try:
            module = origin.fresh_module()
            fresh = _plugin_class(module)(self.bot, origin.config)
        except Exception as e:
            raise PluginError(f"reload of plugin {name!r} failed: {e}") from e
        if fresh.metadata.name != name:
            raise PluginError(f"reloaded plugin {name!r} now calls itself {fresh.metadata.name!r}")
        handover = _Handover(old)
        fresh._handover = handover
        try:
            await fresh.setup()
        except BaseException as e:
            self._roll_back(handover, fresh)
            if not isinstance(e, Exception):
                raise
            raise PluginError(f"setup of the reloaded plugin {name!r} failed: {e}") from e
        finally:
            fresh._handover = None
        # The old instance's roles the new one did not take stop where the
        # swap is; all of its subscriptions leave the index (events already
        # routed to them below their cut still reach them).
        now = bus._core.sequence
        for sub in old._subscription_handles:
            bus._remove(sub, now)
        self.plugins[name] = fresh
        if _IN_DISPATCH.get() is None:
            await self._retire(name, old)
        else:
            # From inside a handler the dispatcher runs, a flush would wait
            # for that very handler, and the events queued behind it still
            # go to the old instance: its teardown waits for them in a task
            # of its own (a fresh context, outside the dispatcher's).
            task = contextvars.Context().run(asyncio.ensure_future, self._retire(name, old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self.logger.info(f"reloaded plugin {name}")
        return fresh

    async def _retire(self, name: str, old: Plugin) -> None:
        """Lets what was already on its way to the replaced instance finish,
        then runs its teardown."""
        await self.event_bus.flush()
        # Unsubscribing by name in the old teardown (the seed's own body does)
        # removes only the old instance's subscriptions, never a newer one's.
        scope = _TEARDOWN_SCOPE.set(frozenset(id(sub) for sub in old._subscription_handles))
        try:
            await old.teardown()
        except Exception as e:
            self.logger.warning(f"teardown of the replaced instance of {name} failed: {e}")
        finally:
            _TEARDOWN_SCOPE.reset(scope)

    def _roll_back(self, handover: _Handover, fresh: Plugin) -> None:
        """A failed reload: the old instance takes its roles back from now
        on; events the new one was given meanwhile are still its own."""
        bus = self.event_bus
        now = bus._core.sequence
        for sub in fresh._subscription_handles:
            bus._remove(sub, now)
        for old, new in handover.taken:
            old.end_skip(new.seam, now)
        fresh._subscription_handles.clear()
        fresh._event_subscriptions.clear()

    def list(self) -> List[str]:
        """The loaded plugins' names."""
        return list(self.plugins)

    async def shutdown(self) -> None:
        """Unloads every plugin, then closes the bus (after a flush)."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        for name in list(self.plugins):
            try:
                await self.unload(name)
            except Exception as e:
                self.logger.warning(f"unloading {name} at shutdown failed: {e}")
        await self.event_bus.aclose()

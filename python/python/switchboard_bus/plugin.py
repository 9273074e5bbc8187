"""The seed's ``Plugin`` base class, with event bus access."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Optional, Tuple

from .event import Event, EventPriority
from .event_bus import _NEVER, EventBus, Handler, Subscription

if TYPE_CHECKING:  # pragma: no cover
    from .manager import PluginManager

__all__ = ["Plugin", "PluginMetadata"]


@dataclass(frozen=True)
class PluginMetadata:
    """A plugin's name (its subscriber name and event source), version and
    description."""

    name: str
    version: str = "1.0.0"
    description: str = ""


class Plugin:
    """Plugin base class with event bus access.

    A plugin names itself with the class attribute ``name`` (or overrides
    ``metadata``), subscribes in ``setup`` and is given ``bot`` (whose
    ``plugin_manager.event_bus`` is the bus) and ``config`` by the manager.

    >>> class Hello(Plugin):
    ...     name = 'hello'
    ...     async def setup(self) -> None:
    ...         self.subscribe('user.joined', self.greet)
    ...     async def greet(self, event: Event) -> None:
    ...         await self.publish('chat.say', {'text': f"hi {event.data['user']}"})
    >>> Hello(bot=None).metadata.name
    'hello'
    """

    #: The plugin's name; defaults to the class name, lower case.
    name: ClassVar[str] = ""
    #: The plugin's version.
    version: ClassVar[str] = "1.0.0"
    #: What the plugin does.
    description: ClassVar[str] = ""

    def __init__(self, bot: Any, config: Optional[Dict[str, Any]] = None) -> None:
        self.bot = bot
        self.config: Dict[str, Any] = dict(config or {})
        self.logger = logging.getLogger(f"plugin.{self.metadata.name}")
        self._event_subscriptions: List[str] = []  # Track subscriptions for cleanup
        self._subscription_handles: List[Subscription] = []
        # Set by the manager while this instance takes over from an older one.
        self._handover: Optional[_Handover] = None

    @property
    def metadata(self) -> PluginMetadata:
        """The plugin's name, version and description."""
        cls = type(self)
        return PluginMetadata(cls.name or cls.__name__.lower(), cls.version, cls.description)

    @property
    def event_bus(self) -> EventBus:
        """Access event bus."""
        manager: PluginManager = self.bot.plugin_manager
        return manager.event_bus

    def subscribe(self, event_pattern: str, handler: Handler, *, replay: int = 0) -> Subscription:
        """Subscribe to event pattern.

        Args:
            event_pattern: Event name or pattern
            handler: Async function(event) to call (or a plain callable)
            replay: Catch up with up to this many matching events from history

        Example:
            self.subscribe('trivia.started', self.on_trivia_start)
        """
        handover = self._handover
        below = handover.replay_below(event_pattern) if handover is not None else _NEVER
        sub = self.event_bus._subscribe(event_pattern, handler, self.metadata.name, replay, below)
        if handover is not None:
            handover.took(event_pattern, sub)
        self._event_subscriptions.append(event_pattern)
        self._subscription_handles.append(sub)
        return sub

    async def publish(
        self, event_name: str, data: Dict[str, Any], priority: EventPriority = EventPriority.NORMAL
    ) -> None:
        """Publish event.

        Args:
            event_name: Event name (recommend: plugin.action format)
            data: Event data
            priority: Event priority

        Example:
            await self.publish('trivia.started', {
                'question': 'What is the answer?',
                'timeout': 30
            })
        """
        event = Event(name=event_name, data=data, source=self.metadata.name, priority=priority)
        await self.event_bus.publish(event)

    def publish_nowait(
        self, event_name: str, data: Dict[str, Any], priority: EventPriority = EventPriority.NORMAL
    ) -> None:
        """Publish without waiting for the handlers (see ``EventBus.publish_nowait``)."""
        event = Event(name=event_name, data=data, source=self.metadata.name, priority=priority)
        self.event_bus.publish_nowait(event)

    async def setup(self) -> None:
        """Called when the plugin is loaded: subscribe here."""

    async def teardown(self) -> None:
        """Cleanup (unsubscribe from all events).

        Removes this instance's own subscriptions (never those of a newer
        instance of the same plugin, which has the same name during a reload).
        """
        for sub in self._subscription_handles:
            sub.unsubscribe()
        self._subscription_handles.clear()
        self._event_subscriptions.clear()


class _Handover:
    """A reload in progress: the old instance's subscriptions, by role.

    A role is a pattern and its ordinal among an instance's subscriptions to
    that pattern (the Rust host's key). When the new instance subscribes a
    role, the old instance's subscription of that role is cut at the new
    one's seam: events numbered below it go to the old instance, the others
    to the new one. Each event of a role is handled exactly once.
    """

    def __init__(self, old: Plugin) -> None:
        self.old: Dict[Tuple[str, int], Subscription] = {}
        counts: Dict[str, int] = {}
        for sub in old._subscription_handles:
            if sub.active:
                k = counts.get(sub.pattern, 0)
                counts[sub.pattern] = k + 1
                self.old[(sub.pattern, k)] = sub
        self.counts: Dict[str, int] = {}
        self.taken: List[Tuple[Subscription, Subscription]] = []

    def replay_below(self, pattern: str) -> int:
        """What the next subscription to ``pattern`` may replay (the events
        numbered below this): nothing for a role the old instance had, which
        goes on at the cut as if one instance had it all along (what the old
        instance handled is never handled again); all it asks otherwise."""
        k = self.counts.get(pattern, 0)
        return 0 if (pattern, k) in self.old else _NEVER

    def took(self, pattern: str, new: Subscription) -> None:
        k = self.counts.get(pattern, 0)
        self.counts[pattern] = k + 1
        old = self.old.get((pattern, k))
        if old is not None:
            # Runs right after the subscribe, with no await in between: no
            # call can slip between the seam and the cut.
            old.skip_from(new.seam)
            self.taken.append((old, new))

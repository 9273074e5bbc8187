"""switchboard_bus: the seed's plugin event bus API on the switchboard engine.

A drop-in for the seed's ``Event``, ``EventPriority``, ``EventBus``,
``Plugin`` and ``PluginManager``: fnmatch patterns matched by a native
index, history with replay, publishing without waiting, and plugins
hot-reloaded from their files with no event lost or handled twice.

>>> from switchboard_bus import Event, EventBus, EventPriority
>>> Event('quote.added', {'id': 7}, 'quote', EventPriority.HIGH).priority
<EventPriority.HIGH: 2>
"""

from .event import Event, EventPriority
from .event_bus import EventBus, Handler, Overflow, QueueFull, Subscription
from .plugin import Plugin, PluginMetadata
from .manager import PluginError, PluginManager

__all__ = [
    "Event",
    "EventBus",
    "EventPriority",
    "Handler",
    "Overflow",
    "Plugin",
    "PluginError",
    "PluginManager",
    "PluginMetadata",
    "QueueFull",
    "Subscription",
]

__version__ = "0.1.0"

"""The seed's own EventBus, verbatim from its design document (the bench's
baseline only; switchboard_bus does not use it). The two modules of the
seed, ``lib/plugin/event.py`` and ``lib/plugin/event_bus.py``, follow
unchanged but for the relative import between them, which is dropped.
"""
# fmt: off
# mypy: ignore-errors
"""
lib/plugin/event.py

Event structure for inter-plugin communication.
"""

from dataclasses import dataclass, field
from typing import Any, Dict
from datetime import datetime
from enum import IntEnum


class EventPriority(IntEnum):
    """Event priority levels."""
    LOW = 0
    NORMAL = 1
    HIGH = 2


@dataclass
class Event:
    """
    Event for inter-plugin communication.
    
    Attributes:
        name: Event name (e.g., 'trivia.started', 'quote.added')
        data: Event data (any JSON-serializable data)
        source: Name of plugin that published event
        priority: Event priority (affects dispatch order)
        timestamp: When event was created
    """
    name: str
    data: Dict[str, Any]
    source: str
    priority: EventPriority = EventPriority.NORMAL
    timestamp: datetime = field(default_factory=datetime.now)
    
    def __str__(self) -> str:
        return f"Event({self.name} from {self.source})"

"""
lib/plugin/event_bus.py

Pub/sub event bus for inter-plugin communication.
"""

import asyncio
import fnmatch
from typing import Dict, List, Callable, Optional, Set
from collections import defaultdict, deque
import logging




class EventBus:
    """
    Pub/sub event bus for plugins.
    
    Features:
    - Subscribe to events by name or pattern
    - Publish events with priority
    - Async dispatch (non-blocking)
    - Error isolation (one handler fails, others run)
    - Event history (last N events)
    
    Args:
        history_size: Number of events to keep in history (default: 100)
        logger: Optional logger instance
    """
    
    def __init__(self, history_size: int = 100,
                 logger: Optional[logging.Logger] = None):
        self.logger = logger or logging.getLogger('plugin.event_bus')
        
        # Subscriptions: event_pattern -> list of (plugin_name, handler)
        self._subscriptions: Dict[str, List[tuple[str, Callable]]] = defaultdict(list)
        
        # Event history
        self._history: deque[Event] = deque(maxlen=history_size)
        
        # Statistics
        self._stats = {
            'events_published': 0,
            'events_dispatched': 0,
            'handler_errors': 0
        }
    
    def subscribe(self, event_pattern: str, handler: Callable,
                 plugin_name: str) -> None:
        """
        Subscribe to events matching pattern.
        
        Args:
            event_pattern: Event name or pattern (supports * wildcard)
            handler: Async function to call on event
            plugin_name: Name of subscribing plugin
        
        Examples:
            bus.subscribe('trivia.started', handler, 'stats')
            bus.subscribe('trivia.*', handler, 'logger')  # All trivia events
            bus.subscribe('*', handler, 'monitor')  # All events
        """
        self._subscriptions[event_pattern].append((plugin_name, handler))
        self.logger.debug(f"{plugin_name} subscribed to {event_pattern}")
    
    def unsubscribe(self, event_pattern: str, plugin_name: str) -> None:
        """
        Unsubscribe plugin from event pattern.
        
        Args:
            event_pattern: Event pattern to unsubscribe from
            plugin_name: Name of plugin
        """
        if event_pattern in self._subscriptions:
            self._subscriptions[event_pattern] = [
                (name, handler) for name, handler in self._subscriptions[event_pattern]
                if name != plugin_name
            ]
    
    def unsubscribe_all(self, plugin_name: str) -> None:
        """
        Unsubscribe plugin from all events.
        
        Args:
            plugin_name: Name of plugin
        """
        for pattern in list(self._subscriptions.keys()):
            self.unsubscribe(pattern, plugin_name)
    
    async def publish(self, event: Event) -> None:
        """
        Publish event to subscribers.
        
        Args:
            event: Event to publish
        """
        self._stats['events_published'] += 1
        
        # Add to history
        self._history.append(event)
        
        # Find matching subscribers
        handlers = self._find_handlers(event.name)
        
        if not handlers:
            self.logger.debug(f"No subscribers for: {event.name}")
            return
        
        # Sort by priority (high -> normal -> low)
        # Within same priority, maintain subscription order
        handlers_by_priority = defaultdict(list)
        for plugin_name, handler in handlers:
            handlers_by_priority[event.priority].append((plugin_name, handler))
        
        # Dispatch in priority order
        for priority in sorted(handlers_by_priority.keys(), reverse=True):
            await self._dispatch_handlers(
                event,
                handlers_by_priority[priority]
            )
    
    def _find_handlers(self, event_name: str) -> List[tuple[str, Callable]]:
        """
        Find all handlers matching event name.
        
        Args:
            event_name: Event name to match
        
        Returns:
            List of (plugin_name, handler) tuples
        """
        handlers = []
        
        for pattern, subscribers in self._subscriptions.items():
            if fnmatch.fnmatch(event_name, pattern):
                handlers.extend(subscribers)
        
        return handlers
    
    async def _dispatch_handlers(self, event: Event,
                                 handlers: List[tuple[str, Callable]]) -> None:
        """
        Dispatch event to handlers.
        
        Args:
            event: Event to dispatch
            handlers: List of (plugin_name, handler) tuples
        """
        for plugin_name, handler in handlers:
            try:
                self._stats['events_dispatched'] += 1
                await handler(event)
            
            except Exception as e:
                self._stats['handler_errors'] += 1
                self.logger.error(
                    f"Error in {plugin_name} handling {event.name}: {e}"
                )
                # Continue with other handlers
    
    def get_history(self, count: Optional[int] = None,
                   event_pattern: Optional[str] = None) -> List[Event]:
        """
        Get event history.
        
        Args:
            count: Number of recent events to return (None = all)
            event_pattern: Filter by event name pattern (None = all)
        
        Returns:
            List of events (most recent first)
        """
        events = list(reversed(self._history))
        
        # Filter by pattern
        if event_pattern:
            events = [e for e in events if fnmatch.fnmatch(e.name, event_pattern)]
        
        # Limit count
        if count:
            events = events[:count]
        
        return events
    
    def get_stats(self) -> Dict[str, int]:
        """
        Get event bus statistics.
        
        Returns:
            Dict with stats (events_published, events_dispatched, handler_errors)
        """
        return self._stats.copy()
    
    def get_subscriptions(self, plugin_name: Optional[str] = None) -> Dict[str, List[str]]:
        """
        Get current subscriptions.
        
        Args:
            plugin_name: Filter by plugin name (None = all)
        
        Returns:
            Dict mapping event patterns to plugin names
        """
        result = defaultdict(list)
        
        for pattern, subscribers in self._subscriptions.items():
            for name, _ in subscribers:
                if plugin_name is None or name == plugin_name:
                    result[pattern].append(name)
        
        return dict(result)

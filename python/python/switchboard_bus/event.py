"""The event a plugin publishes: the seed's ``Event`` and ``EventPriority``, to the letter."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any, Dict


class EventPriority(IntEnum):
    """Event priority levels.

    >>> EventPriority.HIGH > EventPriority.NORMAL > EventPriority.LOW
    True
    """

    LOW = 0
    NORMAL = 1
    HIGH = 2


@dataclass
class Event:
    """An event for inter-plugin communication.

    Attributes:
        name: Event name (e.g. ``'trivia.started'``, ``'quote.added'``)
        data: Event data: any Python object; it is handed to handlers as is
            (never serialised on the way)
        source: Name of the plugin that published the event
        priority: Event priority (events waiting to be dispatched are taken
            ``HIGH`` first)
        timestamp: When the event was created

    >>> event = Event('trivia.started', {'question': '2+2?'}, 'trivia')
    >>> str(event)
    'Event(trivia.started from trivia)'
    >>> event.priority
    <EventPriority.NORMAL: 1>
    """

    name: str
    data: Dict[str, Any]
    source: str
    priority: EventPriority = EventPriority.NORMAL
    timestamp: datetime = field(default_factory=datetime.now)

    def __str__(self) -> str:
        return f"Event({self.name} from {self.source})"

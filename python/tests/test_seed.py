# test/test_event_bus.py

import pytest
from switchboard_bus import Event, EventBus, EventPriority


@pytest.mark.asyncio
async def test_subscribe_and_publish():
    """Test basic pub/sub."""
    bus = EventBus()

    received = []

    async def handler(event):
        received.append(event)

    bus.subscribe('test.event', handler, 'test_plugin')

    event = Event('test.event', {'key': 'value'}, 'publisher')
    await bus.publish(event)

    assert len(received) == 1
    assert received[0].name == 'test.event'


@pytest.mark.asyncio
async def test_wildcard_subscription():
    """Test wildcard patterns."""
    bus = EventBus()

    received = []

    async def handler(event):
        received.append(event)

    bus.subscribe('trivia.*', handler, 'test_plugin')

    await bus.publish(Event('trivia.started', {}, 'trivia'))
    await bus.publish(Event('trivia.ended', {}, 'trivia'))
    await bus.publish(Event('quote.added', {}, 'quote'))

    assert len(received) == 2  # Only trivia.* events


@pytest.mark.asyncio
async def test_priority_dispatch():
    """Test events dispatched by priority."""
    bus = EventBus()

    order = []

    async def high_handler(event):
        order.append('high')

    async def normal_handler(event):
        order.append('normal')

    async def low_handler(event):
        order.append('low')

    bus.subscribe('test', high_handler, 'high')
    bus.subscribe('test', normal_handler, 'normal')
    bus.subscribe('test', low_handler, 'low')

    # Publish with different priorities
    await bus.publish(Event('test', {}, 'src', priority=EventPriority.HIGH))
    await bus.publish(Event('test', {}, 'src', priority=EventPriority.NORMAL))
    await bus.publish(Event('test', {}, 'src', priority=EventPriority.LOW))

    # HIGH priority should dispatch first
    assert order[0] == 'high'


@pytest.mark.asyncio
async def test_error_isolation():
    """Test handler error doesn't affect others."""
    bus = EventBus()

    received = []

    async def failing_handler(event):
        raise ValueError("Handler failed!")

    async def working_handler(event):
        received.append(event)

    bus.subscribe('test', failing_handler, 'bad')
    bus.subscribe('test', working_handler, 'good')

    await bus.publish(Event('test', {}, 'src'))

    # Working handler should still receive event
    assert len(received) == 1

"""Hot reload of a plugin's code from disk, with the host's exactly-once
hand-over: under a flood from other tasks and a thread, every event each
role of the plugin should get is handled exactly once (0 lost, 0
duplicated), counted by sequence numbers."""

import asyncio
import collections
import threading

import pytest

from conftest import within
from switchboard_bus import Event, EventBus, PluginError, PluginManager, QueueFull

PLUGIN = '''
import asyncio
from switchboard_bus import Plugin

VERSION = {version}

class Recorder(Plugin):
    name = "recorder"
    version = str(VERSION)

    async def setup(self):
        sink = self.config["sink"]
        # Two subscriptions to one pattern (roles ("flood.*", 0) and 1) and
        # a catch-all, with the flood running in between.
        self.subscribe("flood.*", lambda e: sink.append(("flood.*#0", e.data, VERSION)), replay={replay})
        await asyncio.sleep(0)
        async def second(e):
            if e.data[1] % 5 == 0:
                await asyncio.sleep(0)   # in flight across the hand-over
            sink.append(("flood.*#1", e.data, VERSION))
        self.subscribe("flood.*", second)
        await asyncio.sleep(0)
        {fail}
        self.subscribe("*", lambda e: sink.append(("*#0", e.data, VERSION)))
'''


def write(path, version, fail=False, replay=0):
    path.write_text(
        PLUGIN.format(version=version, fail='raise RuntimeError("broken setup")' if fail else "pass", replay=replay)
    )


async def flood_and_reload(tmp_path, fail_every=0, replay=0):
    path = tmp_path / "recorder_plugin.py"
    write(path, 0, replay=replay)
    sink: list = []
    manager = PluginManager(event_bus=EventBus(history_size=10, capacity=2000))
    bus = manager.event_bus
    await manager.load(path, {"sink": sink})
    bus.bind_loop()
    published: list = []
    stop = asyncio.Event()
    thread_stop = threading.Event()

    async def inline_flood():
        i = 0
        while not stop.is_set():
            published.append(("inline", i))
            await bus.publish(Event("flood.inline", ("inline", i), "flood"))
            i += 1
            if i % 50 == 0:
                await asyncio.sleep(0)

    async def nowait_flood():
        i = 0
        while not stop.is_set():
            for _ in range(20):
                try:
                    bus.publish_nowait(Event("flood.nowait", ("nowait", i), "flood"))
                except QueueFull:
                    # The loop's own thread never waits for itself: back off.
                    await asyncio.sleep(0.001)
                    continue
                published.append(("nowait", i))
                i += 1
            await asyncio.sleep(0)

    thread_published: list = []

    def thread_flood():
        i = 0
        while not thread_stop.is_set():
            thread_published.append(("thread", i))
            bus.publish_nowait(Event("flood.thread", ("thread", i), "flood"))
            i += 1

    tasks = [asyncio.ensure_future(inline_flood()), asyncio.ensure_future(nowait_flood())]
    thread = threading.Thread(target=thread_flood)
    thread.start()
    failures = 0
    for version in range(1, 11):
        await asyncio.sleep(0.005)
        broken = fail_every and version % fail_every == 0
        write(path, version, fail=broken, replay=replay)
        if broken:
            with pytest.raises(PluginError, match="broken setup"):
                await manager.reload("recorder")
            failures += 1
        else:
            await manager.reload("recorder")
    await asyncio.sleep(0.005)
    stop.set()
    thread_stop.set()
    await within(asyncio.gather(*tasks))
    while thread.is_alive():
        await asyncio.sleep(0.001)
    await within(bus.flush())
    return sink, published + thread_published, failures, manager


def check_exactly_once(sink, published):
    roles = collections.defaultdict(collections.Counter)
    versions = set()
    for role, event_id, version in sink:
        roles[role][tuple(event_id)] += 1
        versions.add(version)
    expected = collections.Counter(tuple(p) for p in published)
    report = {}
    for role in ["flood.*#0", "flood.*#1", "*#0"]:
        got = roles[role]
        lost = sum(1 for k in expected if k not in got)
        duplicated = sum(n - 1 for n in got.values() if n > 1)
        report[role] = (lost, duplicated)
    return report, versions


@pytest.mark.asyncio
@pytest.mark.parametrize("replay", [0, 5])
async def test_reload_under_a_flood_loses_nothing_and_duplicates_nothing(tmp_path, replay):
    # replay=5: regression, each fresh instance's replay handled again what
    # the old one had handled.
    sink, published, _, manager = await flood_and_reload(tmp_path, replay=replay)
    report, versions = check_exactly_once(sink, published)
    print(f"{len(published)} events, {len(sink)} calls, report (lost, duplicated) per role: {report}")
    assert report == {role: (0, 0) for role in report}
    assert len(published) > 1000
    # The code really was reloaded, ten times: every version ran.
    assert versions == set(range(11))
    assert manager.plugins["recorder"].metadata.version == "10"
    assert manager.event_bus.get_subscriptions() == {"flood.*": ["recorder", "recorder"], "*": ["recorder"]}
    await manager.shutdown()


@pytest.mark.asyncio
async def test_a_failed_reload_keeps_the_old_instance_and_still_exactly_once(tmp_path):
    sink, published, failures, manager = await flood_and_reload(tmp_path, fail_every=3)
    report, versions = check_exactly_once(sink, published)
    assert failures == 3
    assert report == {role: (0, 0) for role in report}
    assert 3 not in {v for role, _, v in sink if role == "*#0"}  # a broken version never got "*"
    assert manager.plugins["recorder"].metadata.version == "10"
    await manager.shutdown()


@pytest.mark.asyncio
async def test_reload_from_inside_a_handler(tmp_path):
    path = tmp_path / "recorder_plugin.py"
    write(path, 0)
    sink: list = []
    manager = PluginManager()
    bus = manager.event_bus
    await manager.load(path, {"sink": sink})

    async def reload_command(event):
        write(path, 1)
        await manager.reload("recorder")

    bus.subscribe("admin.reload", reload_command, "admin")
    await bus.publish(Event("flood.x", ("a", 0), "t"))
    bus.publish_nowait(Event("admin.reload", ("admin", 0), "t"))
    await within(bus.flush())
    await bus.publish(Event("flood.x", ("a", 1), "t"))
    assert [(role, v) for role, d, v in sink if d == ("a", 1)] == [("flood.*#0", 1), ("flood.*#1", 1), ("*#0", 1)]
    await manager.shutdown()


@pytest.mark.asyncio
async def test_load_errors_are_clear(tmp_path):
    manager = PluginManager()
    empty = tmp_path / "empty_plugin.py"
    empty.write_text("x = 1\n")
    with pytest.raises(PluginError, match="exactly one Plugin subclass"):
        await manager.load(empty)
    with pytest.raises(FileNotFoundError):
        await manager.load(tmp_path / "missing.py")
    with pytest.raises(TypeError, match="source must be a module"):
        await manager.load(42)  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="no plugin named 'ghost'"):
        await manager.reload("ghost")
    path = tmp_path / "recorder_plugin.py"
    write(path, 0, fail=True)
    with pytest.raises(PluginError, match="setup of plugin 'recorder' failed"):
        await manager.load(path, {"sink": []})
    # A failed setup leaves no subscription behind.
    assert manager.event_bus.get_subscriptions() == {}
    await manager.shutdown()


COUNTER = '''
import asyncio
from switchboard_bus import Plugin

class Counter(Plugin):
    name = "counter"

    async def setup(self):
        sink = self.config["sink"]
        self.subscribe("tick", lambda e: sink.append(e.data))
        await asyncio.sleep(0.01)   # e.g. loading state from a database
'''


@pytest.mark.asyncio
async def test_two_concurrent_reloads_leave_one_live_instance(tmp_path):
    # Regression: both read the old instance before awaiting setup; the first
    # fresh instance was never torn down and stayed subscribed.
    path = tmp_path / "counter_plugin.py"
    path.write_text(COUNTER)
    sink: list = []
    manager = PluginManager()
    await manager.load(path, {"sink": sink})
    await within(asyncio.gather(manager.reload("counter"), manager.reload("counter")))
    await manager.event_bus.publish(Event("tick", 1, "t"))
    assert manager.event_bus.get_subscriptions() == {"tick": ["counter"]}
    assert sink == [1]
    await manager.shutdown()


@pytest.mark.asyncio
async def test_a_second_load_during_the_first_ones_setup_fails(tmp_path):
    # Regression: the name was checked before awaiting setup; both loads won.
    path = tmp_path / "counter_plugin.py"
    path.write_text(COUNTER)
    sink: list = []
    manager = PluginManager()
    results = await asyncio.gather(
        manager.load(path, {"sink": sink}), manager.load(path, {"sink": sink}), return_exceptions=True
    )
    assert isinstance(results[1], PluginError) and "already loaded" in str(results[1]), results
    await manager.event_bus.publish(Event("tick", 1, "t"))
    assert sink == [1], (results, manager.event_bus.get_subscriptions())
    await manager.shutdown()


SEEDY = '''
from switchboard_bus import Plugin

VERSION = {version}

class Seedy(Plugin):
    name = "seedy"

    async def setup(self):
        sink = self.config["sink"]
        self.subscribe("go", lambda e: sink.append(VERSION))
        self.subscribe("other", lambda e: sink.append(("other", VERSION)))

    async def teardown(self):
        {teardown}
'''

SEED_TEARDOWN = """for pattern in self._event_subscriptions:
            self.event_bus.unsubscribe(pattern, self.metadata.name)
        self._event_subscriptions.clear()"""


@pytest.mark.asyncio
@pytest.mark.parametrize("teardown", [SEED_TEARDOWN, "self.event_bus.unsubscribe_all(self.metadata.name)"])
async def test_reload_of_a_plugin_whose_teardown_unsubscribes_by_name_keeps_the_new_instance(tmp_path, teardown):
    # Regression: the old instance's teardown runs after the new one
    # subscribed; unsubscribing by plugin name removed the new instance's
    # subscriptions too (the seed's own teardown body does that).
    path = tmp_path / "seedy_plugin.py"
    path.write_text(SEEDY.format(version=1, teardown=teardown))
    sink: list = []
    mgr = PluginManager()
    await mgr.load(path, {"sink": sink})
    path.write_text(SEEDY.format(version=2, teardown=teardown))
    await mgr.reload("seedy")
    await mgr.event_bus.publish(Event("go", None, "t"))
    await mgr.event_bus.publish(Event("other", None, "t"))
    assert sink == [2, ("other", 2)], (sink, mgr.event_bus.get_subscriptions())
    assert mgr.event_bus.get_subscriptions() == {"go": ["seedy"], "other": ["seedy"]}
    # Its own unload still removes them all.
    await mgr.unload("seedy")
    assert mgr.event_bus.get_subscriptions() == {}
    await mgr.shutdown()


REPLAYER = '''
from switchboard_bus import Plugin

class Rep(Plugin):
    name = "rep"

    async def setup(self):
        sink = self.config["sink"]
        self.subscribe("n", lambda e: sink.append(e.data), replay=5)
'''


@pytest.mark.asyncio
async def test_reload_of_a_plugin_that_subscribes_with_replay_handles_nothing_twice(tmp_path):
    # Regression: the fresh instance's replay handed it 5..9 again.
    path = tmp_path / "rep_plugin.py"
    path.write_text(REPLAYER)
    sink: list = []
    mgr = PluginManager()
    await mgr.load(path, {"sink": sink})
    for i in range(10):
        await mgr.event_bus.publish(Event("n", i, "t"))
    await mgr.reload("rep")
    await mgr.event_bus.publish(Event("n", 10, "t"))
    assert sink == list(range(11)), sink
    await mgr.shutdown()


RELOADER = '''
from switchboard_bus import Plugin

VERSION = {version}

class Rel(Plugin):
    name = "rel"

    async def setup(self):
        sink = self.config["sink"]
        mgr = self.config["mgr"]
        self.torn_down = False
        async def on_go(e):
            sink.append(("go", e.data, VERSION, "after teardown" if self.torn_down else "live"))
            if e.data == "reload":
                await mgr.reload("rel")
        self.subscribe("go", on_go)

    async def teardown(self):
        await super().teardown()
        self.torn_down = True
'''


@pytest.mark.asyncio
@pytest.mark.parametrize("nowait", [False, True])
async def test_reload_from_inside_its_own_handler_runs_no_handler_after_teardown(tmp_path, nowait):
    # Regression (nowait): inside the dispatcher the old teardown ran at once,
    # and the events queued behind the reloading handler, still the old
    # instance's, reached it torn down.
    path = tmp_path / "rel_plugin.py"
    path.write_text(RELOADER.format(version=1))
    sink: list = []
    mgr = PluginManager()
    bus = mgr.event_bus
    await mgr.load(path, {"sink": sink, "mgr": mgr})
    old = mgr.plugins["rel"]
    path.write_text(RELOADER.format(version=2))
    for d in ["a", "reload", "b", "c"]:
        if nowait:
            bus.publish_nowait(Event("go", d, "t"))
        else:
            await within(bus.publish(Event("go", d, "t")))
    await within(bus.flush())
    assert [x[1] for x in sink] == ["a", "reload", "b", "c"]
    assert all(x[3] == "live" for x in sink), sink
    assert bus.get_subscriptions() == {"go": ["rel"]}
    await mgr.shutdown()
    assert old.torn_down

"""A plugin module for usage.py."""

from switchboard_bus import Event, Plugin


class Echo(Plugin):
    name = "echo"

    async def setup(self) -> None:
        self.subscribe("echo.*", self.echo)

    async def echo(self, event: Event) -> None:
        await self.publish("echoed", {"name": event.name})

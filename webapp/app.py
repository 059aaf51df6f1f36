"""The process root: one user's node with its local UI server in front of it.

    app = await App.start(NodeConfig(data_dir=Path("data")), ui_port=0)
    print("Open", app.ui_url)
    ...
    await app.stop()

groups/node.py builds the messenger node and knows no UI; this module builds, in this
order, the EventHub (what the UI's events socket carries, and the node's event sink),
the node, its NodeApi and the UI server with the API's routes. run.py, the demo and the
tests that need a node with its UI call ``App.start``.
"""

from __future__ import annotations

from dataclasses import dataclass

from groups.node import Node, NodeConfig
from groups.node_api import NodeApi
from webapp.api import api_routes
from webapp.events import EventHub
from webapp.server import UiServer, start_ui_server

__all__ = ["App"]


@dataclass(eq=False)
class App:
    node: Node
    api: NodeApi
    ui: UiServer

    @classmethod
    async def start(cls, config: NodeConfig, *, ui_port: int = 0) -> App:
        """Start the node, then the UI server on 127.0.0.1:``ui_port`` (0: a free port);
        if the UI cannot start the node is stopped again."""
        hub = EventHub()
        node = await Node.start(config, events=hub)
        try:
            api = NodeApi(node)
            ui = start_ui_server(config.data_dir, api_routes=api_routes(api), hub=hub,
                                 port=ui_port)
        except BaseException:
            await node.stop()
            raise
        return cls(node, api, ui)

    @property
    def ui_url(self) -> str:
        return self.ui.url

    async def stop(self) -> None:
        """The UI first (no request reaches a stopping node), then the node."""
        await self.ui.stop()
        await self.node.stop()

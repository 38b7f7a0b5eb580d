"""``Scheduler.sessions``: the table of connected clients, which tells the scheduler thread of arrivals.

Clients register themselves from their own threads (``Client.__init__`` in this process; a remote
session's ``Register`` in ``remote/server.py``) and leave by removing their entry::

    sessions[client_id] = session ──► post(ClientSession(client_id, True))  ──► plugins' add_client
    sessions.pop(client_id)        ──► post(ClientSession(client_id, False)) ──► plugins' remove_client

The scheduler thread reads the table on every report (``sessions.get``: a plain dict lookup); only
adding and removing a client pass through here. The ``fire_and_forget`` pseudo-client is not a client.
"""

from __future__ import annotations

from typing import Any, Callable

from ..messages import FIRE_AND_FORGET, ClientSession


class SessionTable(dict):
    """client id -> session (``Client``, or a remote client's slot); changes are posted as messages."""

    def __init__(self, post: Callable[[Any], None]):
        super().__init__()
        self._post = post

    def __setitem__(self, client: str, session) -> None:
        arrived = client not in self
        super().__setitem__(client, session)
        if arrived and client != FIRE_AND_FORGET:
            self._post(ClientSession(client, True))

    def pop(self, client: str, *default):
        present = client in self
        session = super().pop(client, *default)
        if present and client != FIRE_AND_FORGET:
            self._post(ClientSession(client, False))
        return session

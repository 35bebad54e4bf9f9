"""qudag_io: thin asyncio/uvloop adapters that drive the sans-IO cores with real sockets.

``connect``/``listen`` open authenticated post-quantum links (``qudag_io.link``);
``qudag_io.stun`` runs the STUN client; ``qudag_io.http`` serves metrics and status;
``qudag_io.keystore`` writes and reads encrypted identity files.
"""
from qudag_io.link import Connection, ConnectionClosed, Listener, connect, listen

__all__ = ["Connection", "ConnectionClosed", "Listener", "connect", "listen"]

"""The link: one authenticated, encrypted connection between two nodes.

A ``Link`` runs the post-quantum handshake (``qudag_core.handshake``) and then the secure
channel (``qudag_core.channel``) behind one stream API, so an adapter drives a single
object from the first byte to the last.  See docs/handshake.md and docs/channel.md.
"""
from qudag_core.handshake import ResponderContext
from qudag_core.link.core import Link, LinkConfig
from qudag_core.link.events import Established, Event, KeyUpdated, MessageReceived, PongReceived, Terminated

__all__ = [
    "Established",
    "Event",
    "KeyUpdated",
    "Link",
    "LinkConfig",
    "MessageReceived",
    "PongReceived",
    "ResponderContext",
    "Terminated",
]

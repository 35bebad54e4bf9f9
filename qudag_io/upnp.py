"""UPnP IGD on asyncio: SSDP discovery over UDP multicast, HTTP with h11, port mappings.

The messages and their parsing live in ``qudag_core.nat.upnp``; this module only moves
bytes.  Every wait is bounded, every HTTP body is capped at ``MAX_XML_SIZE``.

    mapping = await map_port(internal_port=4000, external_port=4000, protocol="TCP")
    async with mapping:          # DeletePortMapping on exit (also on error/shutdown)
        print(mapping.external_ip, mapping.external_port)
"""
from __future__ import annotations

import asyncio
import socket
from typing import Optional
from urllib.parse import urlsplit

import h11

from qudag_core.nat import upnp as U

__all__ = ["discover", "fetch", "IgdClient", "PortMapping", "map_port"]


class _SsdpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: list = []
        self.got = asyncio.Event()

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            self.answers.append(U.parse_ssdp_response(data))
        except U.SsdpParseError:
            return  # not an answer (e.g. someone else's NOTIFY): drop
        self.got.set()


async def discover(*, timeout: float = 2.0, search_target: str = U.IGD_DEVICE_V1,
                   interface_ip: Optional[str] = None, retries: int = 2) -> list:
    """M-SEARCH for gateways; returns the parsed answers (first answers after one arrives)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
    if interface_ip:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface_ip))
    sock.bind((interface_ip or "0.0.0.0", 0))
    sock.setblocking(False)
    transport, proto = await loop.create_datagram_endpoint(_SsdpProtocol, sock=sock)
    try:
        msg = U.build_msearch(search_target, mx=max(1, min(5, int(timeout))))
        for _ in range(max(1, retries)):
            transport.sendto(msg, U.SSDP_ADDRESS)
            try:
                await asyncio.wait_for(proto.got.wait(), timeout / max(1, retries))
                await asyncio.sleep(0.1)  # let other gateways' answers arrive too
                break
            except asyncio.TimeoutError:
                continue
        return list(proto.answers)
    finally:
        transport.close()


async def fetch(url: str, *, method: str = "GET", headers: tuple = (), body: bytes = b"",
                timeout: float = 5.0, max_body: int = U.MAX_XML_SIZE) -> tuple:
    """One HTTP/1.1 exchange with h11; returns ``(status, body)``; body capped at ``max_body``."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("only http URLs")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    hdrs = list(headers)
    if not any(k.lower() == "host" for k, _ in hdrs):
        hdrs.insert(0, ("Host", parts.netloc))
    if body and not any(k.lower() == "content-length" for k, _ in hdrs):
        hdrs.append(("Content-Length", str(len(body))))
    if not any(k.lower() == "connection" for k, _ in hdrs):
        hdrs.append(("Connection", "close"))

    async def exchange() -> tuple:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=16 * 1024)
            out = conn.send(h11.Request(method=method, target=target, headers=hdrs))
            if body:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
            writer.write(out)
            await writer.drain()
            status, chunks, size = None, [], 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > max_body:
                        raise U.UpnpXmlError("HTTP body too large")
                    chunks.append(bytes(event.data))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            if status is None:
                raise U.UpnpError("no HTTP response")
            return status, b"".join(chunks)
        except h11.RemoteProtocolError as exc:
            raise U.UpnpError(f"bad HTTP from gateway: {exc}") from None
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    return await asyncio.wait_for(exchange(), timeout)


class IgdClient:
    """SOAP control of one gateway's WAN connection service."""

    def __init__(self, service: U.IgdService, timeout: float = 5.0) -> None:
        self.service = service
        self.timeout = timeout

    @classmethod
    async def from_location(cls, location: str, timeout: float = 5.0) -> "IgdClient":
        status, body = await fetch(location, timeout=timeout)
        if status != 200:
            raise U.UpnpError(f"device description: HTTP {status}")
        return cls(U.parse_device_description(body, location), timeout)

    @classmethod
    async def discover(cls, *, timeout: float = 2.0, interface_ip: Optional[str] = None) -> "IgdClient":
        answers = await discover(timeout=timeout, interface_ip=interface_ip)
        if not answers:
            raise U.UpnpError("no UPnP gateway answered M-SEARCH")
        return await cls.from_location(answers[0].location, timeout)

    async def _call(self, req: U.SoapRequest) -> dict:
        status, body = await fetch(req.url, method=req.method, headers=req.headers, body=req.body,
                                   timeout=self.timeout)
        return U.parse_soap_response(status, body, req)

    async def get_external_ip(self) -> str:
        out = await self._call(U.get_external_ip_address(self.service))
        return out.get("NewExternalIPAddress", "")

    async def add_port_mapping(self, **kw) -> None:
        await self._call(U.add_port_mapping(self.service, **kw))

    async def delete_port_mapping(self, *, external_port: int, protocol: str) -> None:
        await self._call(U.delete_port_mapping(self.service, external_port=external_port, protocol=protocol))


class PortMapping:
    """A mapping held for ``lease`` seconds; removed by ``close()`` / ``async with`` exit."""

    def __init__(self, client: IgdClient, external_ip: str, external_port: int, protocol: str) -> None:
        self.client = client
        self.external_ip = external_ip
        self.external_port = external_port
        self.protocol = protocol
        self.closed = False

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.client.delete_port_mapping(external_port=self.external_port, protocol=self.protocol)

    async def __aenter__(self) -> "PortMapping":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def map_port(*, internal_port: int, internal_client: Optional[str] = None,
                   external_port: Optional[int] = None, protocol: str = "TCP", lease: int = 3600,
                   description: str = "qudag", client: Optional[IgdClient] = None,
                   timeout: float = 2.0) -> PortMapping:
    """Discover the gateway (unless ``client``), add a mapping and learn the external IP."""
    if client is None:
        client = await IgdClient.discover(timeout=timeout)
    if internal_client is None:
        # The address we use towards the gateway is the one to map to.
        host = urlsplit(client.service.control_url).hostname or "0.0.0.0"
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.connect((host, 9))
            internal_client = probe.getsockname()[0]
        finally:
            probe.close()
    ext = external_port or internal_port
    await client.add_port_mapping(external_port=ext, protocol=protocol, internal_port=internal_port,
                                  internal_client=internal_client, description=description, lease=lease)
    try:
        ip = await client.get_external_ip()
    except BaseException:
        await client.delete_port_mapping(external_port=ext, protocol=protocol)
        raise
    return PortMapping(client, ip, ext, protocol)

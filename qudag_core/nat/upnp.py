"""UPnP IGD port mapping, sans-IO: SSDP discovery messages, device descriptions, SOAP control.

Implements the client side of UPnP Device Architecture 1.1 §1 (SSDP M-SEARCH over UDP
multicast 239.255.255.250:1900 and its unicast ``HTTP/1.1 200 OK`` answer with LOCATION),
§2 (the device description XML, whose ``serviceList`` names the ``controlURL`` of
``WANIPConnection`` / ``WANPPPConnection``) and §3 (SOAP 1.1 actions ``AddPortMapping``,
``DeletePortMapping``, ``GetExternalIPAddress`` of the IGD WANIPConnection:1/2 service,
with UPnP errors returned as SOAP faults, e.g. 718 ConflictInMappingEntry).

Design decision a reader would ask about: XML from the network is parsed with the
standard library's ``xml.etree.ElementTree`` only after a byte-level check rejects any
DOCTYPE or ENTITY declaration (so no entity expansion, "billion laughs" or external
entity can happen) and after a size cap; HTTP itself is left to h11 in ``qudag_io/upnp.py``.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit
from xml.sax.saxutils import escape

from qudag_core.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "UpnpError", "SsdpParseError", "UpnpXmlError", "UpnpSoapFault",
    "SSDP_ADDRESS", "IGD_DEVICE_V1", "IGD_DEVICE_V2", "WAN_SERVICES",
    "SsdpResponse", "IgdService", "SoapRequest",
    "build_msearch", "parse_ssdp_response", "parse_device_description",
    "build_soap_request", "parse_soap_response",
    "add_port_mapping", "delete_port_mapping", "get_external_ip_address",
    "MAX_SSDP_SIZE", "MAX_XML_SIZE",
]

SSDP_ADDRESS = ("239.255.255.250", 1900)
IGD_DEVICE_V1 = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
IGD_DEVICE_V2 = "urn:schemas-upnp-org:device:InternetGatewayDevice:2"
WAN_SERVICES = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
MAX_SSDP_SIZE = 8 * 1024
MAX_XML_SIZE = 64 * 1024
_MAX_HEADERS = 64
_SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
_FORBIDDEN_XML = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class UpnpError(RemoteProtocolError):
    """Base class of UPnP errors caused by what the gateway sent."""


class SsdpParseError(UpnpError):
    """An SSDP answer is malformed or not an answer at all."""


class UpnpXmlError(UpnpError):
    """A description or SOAP body is malformed, too large, or declares a DOCTYPE/ENTITY."""


class UpnpSoapFault(UpnpError):
    """The gateway answered with a SOAP fault carrying a UPnP error code."""

    def __init__(self, upnp_code: int | None, description: str) -> None:
        super().__init__(f"UPnP error {upnp_code}: {description}")
        self.upnp_code = upnp_code
        self.description = description


# --------------------------------------------------------------------------- SSDP
def build_msearch(search_target: str = IGD_DEVICE_V1, mx: int = 2) -> bytes:
    """The M-SEARCH request (UDA 1.1 §1.3.2) to send to ``SSDP_ADDRESS``."""
    if not 1 <= mx <= 5:
        raise LocalProtocolError("MX must be 1..5 seconds")
    if any(c in search_target for c in "\r\n"):
        raise LocalProtocolError("bad search target")
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {SSDP_ADDRESS[0]}:{SSDP_ADDRESS[1]}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {mx}\r\n"
        f"ST: {search_target}\r\n"
        "\r\n"
    ).encode("ascii")


@dataclass(frozen=True, slots=True, kw_only=True)
class SsdpResponse:
    """One gateway's answer to M-SEARCH."""

    location: str
    """URL of the device description (plain http)."""
    search_target: str
    usn: str = ""
    server: str = ""
    max_age: int | None = None


def parse_ssdp_response(data: bytes) -> SsdpResponse:
    """Parse a unicast M-SEARCH answer; ``SsdpParseError`` for anything else."""
    if len(data) > MAX_SSDP_SIZE:
        raise SsdpParseError("SSDP answer too large")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise SsdpParseError("SSDP answer is not UTF-8") from None
    head, sep, _ = text.partition("\r\n\r\n")
    if not sep:
        raise SsdpParseError("SSDP answer has no end of headers")
    lines = head.split("\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or status[0] != "HTTP/1.1" or status[1] != "200":
        raise SsdpParseError("not an HTTP/1.1 200 answer")
    if len(lines) - 1 > _MAX_HEADERS:
        raise SsdpParseError("too many SSDP headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or any(ord(c) < 32 for c in value):
            raise SsdpParseError("malformed SSDP header line")
        headers.setdefault(name.lower(), value.strip())
    location = headers.get("location", "")
    try:
        parts = urlsplit(location)
        port = parts.port
    except ValueError:
        raise SsdpParseError("bad LOCATION") from None
    if parts.scheme != "http" or not parts.hostname:
        raise SsdpParseError("LOCATION must be an http URL")
    del port
    max_age = None
    m = re.search(r"max-age\s*=\s*(\d{1,9})", headers.get("cache-control", ""), re.IGNORECASE)
    if m:
        max_age = int(m.group(1))
    return SsdpResponse(location=location, search_target=headers.get("st", ""), usn=headers.get("usn", ""),
                        server=headers.get("server", ""), max_age=max_age)


# --------------------------------------------------------------------------- XML helpers
def _parse_xml(data: bytes) -> ET.Element:
    data = bytes(data)
    if len(data) > MAX_XML_SIZE:
        raise UpnpXmlError("XML document too large")
    if _FORBIDDEN_XML.search(data):
        raise UpnpXmlError("XML with DOCTYPE/ENTITY declarations is refused")
    try:
        return ET.fromstring(data)
    except (ET.ParseError, ValueError, UnicodeError, RecursionError) as exc:
        raise UpnpXmlError(f"malformed XML: {exc}") from None


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _child_text(elem: ET.Element, name: str) -> str:
    for child in elem:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return ""


# --------------------------------------------------------------------------- description
@dataclass(frozen=True, slots=True, kw_only=True)
class IgdService:
    """A WAN connection service found in a device description."""

    service_type: str
    control_url: str
    """Absolute http URL to POST SOAP actions to."""


def parse_device_description(data: bytes, location: str) -> IgdService:
    """Find the best WAN connection service (UDA 1.1 §2.3); relative URLs resolve
    against URLBase or ``location``.  ``UpnpXmlError`` if there is none."""
    root = _parse_xml(data)
    base = location
    for child in root:
        if _local(child.tag) == "URLBase" and (child.text or "").strip():
            base = child.text.strip()
    found: dict[str, str] = {}
    for elem in root.iter():
        if _local(elem.tag) != "service":
            continue
        st, ctl = _child_text(elem, "serviceType"), _child_text(elem, "controlURL")
        if st in WAN_SERVICES and ctl and st not in found:
            found[st] = ctl
    for st in WAN_SERVICES:
        if st in found:
            url = urljoin(base, found[st])
            try:
                parts = urlsplit(url)
                parts.port
            except ValueError:
                raise UpnpXmlError("bad controlURL") from None
            if parts.scheme != "http" or not parts.hostname:
                raise UpnpXmlError("controlURL must be http")
            return IgdService(service_type=st, control_url=url)
    raise UpnpXmlError("no WANIPConnection/WANPPPConnection service in the description")


# --------------------------------------------------------------------------- SOAP
@dataclass(frozen=True, slots=True, kw_only=True)
class SoapRequest:
    """An HTTP request for the adapter to send (with h11)."""

    method: str
    url: str
    headers: tuple
    body: bytes = field(repr=False)
    action: str
    service_type: str


def build_soap_request(service: IgdService, action: str, args: list) -> SoapRequest:
    """SOAP 1.1 envelope for ``action`` with ordered ``[(name, value), ...]`` arguments."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,63}", action):
        raise LocalProtocolError("bad action name")
    parts = []
    for name, value in args:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,63}", name):
            raise LocalProtocolError("bad argument name")
        parts.append(f"<{name}>{escape(str(value))}</{name}>")
    body = (
        '<?xml version="1.0"?>\r\n'
        f'<s:Envelope xmlns:s="{_SOAP_ENV}" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
        f'<s:Body><u:{action} xmlns:u="{escape(service.service_type)}">{"".join(parts)}</u:{action}>'
        "</s:Body></s:Envelope>\r\n"
    ).encode("utf-8")
    u = urlsplit(service.control_url)
    headers = (
        ("Host", u.netloc),
        ("Content-Type", 'text/xml; charset="utf-8"'),
        ("SOAPAction", f'"{service.service_type}#{action}"'),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    )
    return SoapRequest(method="POST", url=service.control_url, headers=headers, body=body, action=action,
                       service_type=service.service_type)


def parse_soap_response(status: int, body: bytes, request: SoapRequest) -> dict:
    """The output arguments of ``request.action`` as ``{name: text}``; a fault raises
    ``UpnpSoapFault``; anything else malformed raises ``UpnpXmlError``."""
    root = _parse_xml(body)
    if _local(root.tag) != "Envelope":
        raise UpnpXmlError("not a SOAP envelope")
    body_el = next((c for c in root if _local(c.tag) == "Body"), None)
    if body_el is None:
        raise UpnpXmlError("SOAP envelope without Body")
    for child in body_el:
        name = _local(child.tag)
        if name == "Fault":
            code: int | None = None
            desc = _child_text(child, "faultstring")
            for e in child.iter():
                if _local(e.tag) == "errorCode":
                    try:
                        code = int((e.text or "").strip())
                    except ValueError:
                        code = None
                elif _local(e.tag) == "errorDescription":
                    desc = (e.text or "").strip()
            raise UpnpSoapFault(code, desc[:200])
        if name == request.action + "Response":
            if status != 200:
                raise UpnpXmlError(f"HTTP status {status} with a non-fault body")
            return {_local(arg.tag): (arg.text or "").strip() for arg in child}
    raise UpnpXmlError(f"no {request.action}Response in the SOAP body (HTTP {status})")


def add_port_mapping(service: IgdService, *, external_port: int, protocol: str, internal_port: int,
                     internal_client: str, description: str = "qudag", lease: int = 3600) -> SoapRequest:
    """AddPortMapping (WANIPConnection:1 §2.4.16); ``lease`` seconds (0 = the IGD's indefinite)."""
    if protocol not in ("TCP", "UDP"):
        raise LocalProtocolError("protocol must be TCP or UDP")
    for p in (external_port, internal_port):
        if not 1 <= p <= 65535:
            raise LocalProtocolError("port out of range")
    return build_soap_request(service, "AddPortMapping", [
        ("NewRemoteHost", ""), ("NewExternalPort", external_port), ("NewProtocol", protocol),
        ("NewInternalPort", internal_port), ("NewInternalClient", internal_client), ("NewEnabled", 1),
        ("NewPortMappingDescription", description), ("NewLeaseDuration", lease),
    ])


def delete_port_mapping(service: IgdService, *, external_port: int, protocol: str) -> SoapRequest:
    return build_soap_request(service, "DeletePortMapping", [
        ("NewRemoteHost", ""), ("NewExternalPort", external_port), ("NewProtocol", protocol)])


def get_external_ip_address(service: IgdService) -> SoapRequest:
    return build_soap_request(service, "GetExternalIPAddress", [])

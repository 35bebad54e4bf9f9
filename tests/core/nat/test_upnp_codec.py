"""UPnP IGD codecs (qudag_core/nat/upnp.py) against messages recorded from Debian's
miniupnpd 2.3.1 (UDA 1.1 §1.3.3 SSDP answer, §2 description, §3.2 SOAP responses/faults),
plus properties: any input parses or raises a declared error, DOCTYPE/ENTITY refused."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings, strategies as st

import _upnp_recorded as REC
from qudag_core.errors import LocalProtocolError
from qudag_core.nat import upnp as U

LOC = REC.LOCATION.decode()


def test_recorded_ssdp_answer():
    r = U.parse_ssdp_response(REC.SSDP)
    assert r.location == LOC == "http://192.0.2.1:5000/rootDesc.xml"
    assert r.search_target == U.IGD_DEVICE_V1
    assert r.max_age == 120 and "MiniUPnPd/2.3.1" in r.server
    assert r.usn.startswith("uuid:3c4f1a52")


def test_recorded_description_picks_wanipconnection():
    svc = U.parse_device_description(REC.DESC, LOC)
    assert svc.service_type == "urn:schemas-upnp-org:service:WANIPConnection:2"
    assert svc.control_url == "http://192.0.2.1:5000/ctl/IPConn"


def test_recorded_soap_responses():
    svc = U.parse_device_description(REC.DESC, LOC)
    req = U.get_external_ip_address(svc)
    assert U.parse_soap_response(int(REC.GETIP_STATUS), REC.GETIP, req) == {"NewExternalIPAddress": "203.0.113.2"}
    add = U.add_port_mapping(svc, external_port=5555, protocol="TCP", internal_port=5555,
                             internal_client="192.0.2.2", lease=60)
    assert U.parse_soap_response(int(REC.ADD_STATUS), REC.ADD, add) == {}
    dele = U.delete_port_mapping(svc, external_port=5555, protocol="TCP")
    assert U.parse_soap_response(int(REC.DELETE_STATUS), REC.DELETE, dele) == {}
    with pytest.raises(U.UpnpSoapFault) as exc:
        U.parse_soap_response(int(REC.ADD_CONFLICT_CLIENT_STATUS), REC.ADD_CONFLICT_CLIENT, add)
    assert exc.value.upnp_code == 718 and exc.value.description == "ConflictInMappingEntry"
    # A response to a different action is not accepted as this one's.
    with pytest.raises(U.UpnpXmlError):
        U.parse_soap_response(200, REC.GETIP, add)


def test_soap_request_shape():
    svc = U.IgdService(service_type="urn:schemas-upnp-org:service:WANIPConnection:1",
                       control_url="http://192.0.2.1:5000/ctl/IPConn")
    req = U.add_port_mapping(svc, external_port=4000, protocol="UDP", internal_port=4001,
                             internal_client="192.0.2.2", description="a<b&c", lease=30)
    headers = dict(req.headers)
    assert headers["SOAPAction"] == '"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"'
    assert headers["Host"] == "192.0.2.1:5000" and int(headers["Content-Length"]) == len(req.body)
    root = ET.fromstring(req.body)
    action = root[0][0]
    assert action.tag == "{urn:schemas-upnp-org:service:WANIPConnection:1}AddPortMapping"
    args = [(c.tag, c.text) for c in action]
    assert args == [("NewRemoteHost", None), ("NewExternalPort", "4000"), ("NewProtocol", "UDP"),
                    ("NewInternalPort", "4001"), ("NewInternalClient", "192.0.2.2"), ("NewEnabled", "1"),
                    ("NewPortMappingDescription", "a<b&c"), ("NewLeaseDuration", "30")]
    with pytest.raises(LocalProtocolError):
        U.add_port_mapping(svc, external_port=0, protocol="TCP", internal_port=1, internal_client="x")
    with pytest.raises(LocalProtocolError):
        U.build_soap_request(svc, "Bad Action", [])
    assert U.build_msearch().startswith(b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<root><device><serviceList><service><serviceType>&lol2;</serviceType></service></serviceList></device></root>"""


def test_doctype_entities_and_size_are_refused():
    with pytest.raises(U.UpnpXmlError):
        U.parse_device_description(BILLION_LAUGHS, LOC)
    with pytest.raises(U.UpnpXmlError):
        U.parse_device_description(REC.DESC.replace(b"<root", b"<!doctype root><root", 1), LOC)
    with pytest.raises(U.UpnpXmlError):
        U.parse_device_description(REC.DESC + b" " * U.MAX_XML_SIZE, LOC)
    with pytest.raises(U.SsdpParseError):
        U.parse_ssdp_response(REC.SSDP + b"X" * U.MAX_SSDP_SIZE)


def test_truncations_and_garbage():
    for i in range(len(REC.SSDP) - 3):  # anything short of the blank line is refused
        with pytest.raises(U.SsdpParseError):
            U.parse_ssdp_response(REC.SSDP[:i])
    assert U.parse_ssdp_response(REC.SSDP + b"trailing").location == LOC  # body ignored
    svc = U.parse_device_description(REC.DESC, LOC)
    req = U.get_external_ip_address(svc)
    for i in range(0, len(REC.GETIP) - 3, 7):
        with pytest.raises(U.UpnpError):
            U.parse_soap_response(200, REC.GETIP[:i], req)
    with pytest.raises(U.UpnpXmlError):
        U.parse_soap_response(200, REC.GETIP + b"<junk/>", req)
    with pytest.raises(U.SsdpParseError):
        U.parse_ssdp_response(REC.SSDP.replace(b"http://", b"file://"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_ssdp_any_bytes(data):
    try:
        r = U.parse_ssdp_response(data)
    except U.SsdpParseError:
        return
    assert r.location.startswith("http://")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["LOCATION", "ST", "USN", "CACHE-CONTROL", "X"]),
                          st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)),
                max_size=8))
def test_ssdp_structured_headers(headers):
    data = ("HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode()
    try:
        r = U.parse_ssdp_response(data)
    except U.SsdpParseError:
        return
    first = next(v for k, v in headers if k == "LOCATION")
    assert r.location == first.strip()


xml_fragments = st.lists(st.sampled_from([
    b"<s:Envelope xmlns:s='http://schemas.xmlsoap.org/soap/envelope/'>", b"</s:Envelope>", b"<s:Body>",
    b"</s:Body>", b"<u:GetExternalIPAddressResponse xmlns:u='x'>", b"</u:GetExternalIPAddressResponse>",
    b"<NewExternalIPAddress>", b"</NewExternalIPAddress>", b"1.2.3.4", b"<s:Fault>", b"</s:Fault>",
    b"<errorCode>", b"</errorCode>", b"71x", b"<!ENTITY a 'b'>", b"&amp;", b"&a;", b"<![CDATA[x]]>",
    b"\xff", b"<?xml version='1.0'?>",
]), max_size=14).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(xml_fragments, st.binary(max_size=300)), st.integers(100, 599))
def test_soap_any_input_gives_result_or_declared_error(body, status):
    svc = U.IgdService(service_type="x", control_url="http://192.0.2.1/c")
    req = U.get_external_ip_address(svc)
    try:
        out = U.parse_soap_response(status, body, req)
    except U.UpnpError:
        return
    assert isinstance(out, dict)


@settings(max_examples=200, deadline=None)
@given(st.one_of(xml_fragments, st.binary(max_size=300)))
def test_description_any_input(body):
    try:
        svc = U.parse_device_description(body, LOC)
    except U.UpnpError:
        return
    assert svc.control_url.startswith("http://")

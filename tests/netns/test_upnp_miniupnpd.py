"""UPnP IGD against Debian's miniupnpd, in a router namespace the test builds itself.

The inner peer discovers the gateway by SSDP, reads its description, maps its qudag port
with AddPortMapping (over HTTP with h11), and a peer on the "internet" side then reaches it
through the mapped public address with ``establish`` (path "direct", post-quantum handshake,
payload hash checked).  On shutdown the mapping is deleted (DeletePortMapping) and the
router's nftables chain no longer holds the DNAT rule.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest

from netns_lab import LabUnavailable, UpnpLab, wait_for

pytestmark = pytest.mark.netns
PORT = 4444


@pytest.fixture
def upnp_lab(tmp_path):
    try:
        UpnpLab.probe()
    except LabUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    for tool in ("miniupnpd", "turnserver", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    lab = UpnpLab()
    try:
        lab.build(str(tmp_path))
        lab.start_daemons(str(tmp_path))
        log = tmp_path / "miniupnpd.log"
        ready = wait_for(lambda: log.exists() and b"Port forwarding is now enabled" in log.read_bytes(), 15)
        assert ready, f"miniupnpd did not enable forwarding: {log.read_bytes()[-1500:]!r}"
        yield lab
    finally:
        lab.close()


def _dnat_rules(lab):
    out = lab.sh(lab.router, "nft list chain inet filter prerouting_miniupnpd").stdout
    return [line for line in out.splitlines() if "dnat" in line]


def test_mapping_created_used_and_removed(upnp_lab, tmp_path):
    lab, w = upnp_lab, str(tmp_path)
    serve = lab.node(lab.inner, "upnp-serve", w, "--local-port", str(PORT), "--lifetime", "30", name="inner")
    assert wait_for(lambda: os.path.exists(os.path.join(w, "inner.json")) or serve.poll() is not None, 20), \
        open(os.path.join(w, "inner.log")).read()[-2000:]
    mapped = json.load(open(os.path.join(w, "inner.json")))
    assert mapped == {"external_ip": "203.0.113.2", "external_port": PORT}
    rules = _dnat_rules(lab)
    assert any(f"dport {PORT}" in r and "192.0.2.2" in r for r in rules), rules

    dial = lab.node(lab.inet, "dial-direct", w, "--lifetime", "20", name="outer")
    out_json = os.path.join(w, "outer.json")
    assert wait_for(lambda: os.path.exists(out_json) or dial.poll() not in (None,), 25), \
        open(os.path.join(w, "outer.log")).read()[-2000:]
    result = json.load(open(out_json))
    assert result["path"] == "direct" and result["hash_ok"] is True
    assert result["remote"] == ["203.0.113.2", PORT]

    open(os.path.join(w, "inner.stop"), "w").close()
    assert wait_for(lambda: os.path.exists(os.path.join(w, "inner.deleted")), 15)
    assert json.load(open(os.path.join(w, "inner.deleted")))["served"] is True
    assert _dnat_rules(lab) == []

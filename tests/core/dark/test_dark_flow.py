"""End to end without sockets: Publisher -> DescriptorStore (an in-memory DHT) ->
Resolver, for a long-term and an ephemeral address, through republish and unpublish."""
from __future__ import annotations

from dark_helpers import NOW, SERVICE_CERT, SERVICE_ID, Rng, drive
from qudag_core.dark import (
    AliasClaim,
    AliasStore,
    DarkService,
    DescriptorStore,
    Publisher,
    Resolved,
    ResolveFailed,
    Resolver,
    Unpublished,
    ephemeral_signing_key,
    parse_name,
)


def _publish(pub, stores, now):
    for index, data in pub.due(now):
        for s in stores:
            assert s.put(data, now).accepted


def test_publish_resolve_republish_unpublish():
    store = DescriptorStore()
    svc = DarkService.from_identity(SERVICE_ID, certificate=SERVICE_CERT)
    pub = Publisher(svc, Rng(b"p"), republish_interval=3600, lifetime=3 * 3600)
    _publish(pub, [store], NOW)
    name = str(svc.address)
    r = Resolver(Rng(b"r"), cache_ttl=60)
    ev = drive(r, store, r.resolve(parse_name(name), NOW), NOW)[0][0]
    assert isinstance(ev, Resolved) and ev.endpoint.certificate == SERVICE_CERT
    first_rev = ev.endpoint.revision
    # Hours later the publisher has republished; the resolver sees the new revision.
    for h in range(1, 6):
        _publish(pub, [store], NOW + h * 3600)
    later = NOW + 5 * 3600 + 60
    ev = drive(r, store, r.resolve(svc.address, later), later)[0][0]
    assert isinstance(ev, Resolved) and ev.endpoint.revision > first_rev
    # Without republishing, the descriptor lapses.
    gone = NOW + 9 * 3600
    ev = drive(r, store, r.resolve(svc.address, gone), gone)[0][0]
    assert isinstance(ev, ResolveFailed)
    # Unpublish: tombstones replace the descriptors and the resolver reports it.
    _publish(pub, [store], gone)
    for index, data in pub.unpublish(gone + 1):
        assert store.put(data, gone + 1).accepted
    ev = drive(r, store, r.resolve(svc.address, gone + 120), gone + 120)[0][0]
    assert isinstance(ev, ResolveFailed) and isinstance(ev.error, Unpublished)


def test_ephemeral_address_links_to_node_only_inside():
    store = DescriptorStore()
    eph = ephemeral_signing_key(SERVICE_ID.signing_key.seed, 3)
    svc = DarkService(eph.seed, certificate=SERVICE_CERT)
    assert svc.address.identity_digest != SERVICE_ID.identity_digest
    _publish(Publisher(svc, Rng(b"e")), [store], NOW)
    for data in store.get(next(iter(store._by_index))):
        assert SERVICE_ID.signing_key.public_key.raw[:64] not in data
    r = Resolver(Rng())
    ev = drive(r, store, r.resolve(svc.address, NOW), NOW)[0][0]
    assert isinstance(ev, Resolved)
    assert not ev.endpoint.is_long_term and ev.endpoint.expected_peer_id == SERVICE_ID.node_id


def test_alias_then_address():
    aliases = AliasStore()
    svc = DarkService.from_identity(SERVICE_ID, certificate=SERVICE_CERT)
    aliases.put(AliasClaim.sign(SERVICE_ID.signing_key, "my-domain.dark", svc.address, 1).to_bytes())
    store = DescriptorStore()
    _publish(Publisher(svc, Rng()), [store], NOW)
    target = aliases.resolve(parse_name("my-domain.dark"))
    r = Resolver(Rng())
    ev = drive(r, store, r.resolve(target, NOW), NOW)[0][0]
    assert isinstance(ev, Resolved) and ev.endpoint.expected_peer_id == SERVICE_ID.node_id

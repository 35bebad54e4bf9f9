"""KRPC (BEP 5, BEP 44) and the Kademlia DHT core: bencode codec, messages, routing table,
lookups, tokens and record store.  Sans-IO; see docs/dht.md."""

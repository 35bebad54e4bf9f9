"""Onion routing cores: fixed-size cells, circuit extension, relay crypto, streams and the
traffic mixer.  Sans-IO; see docs/onion.md."""

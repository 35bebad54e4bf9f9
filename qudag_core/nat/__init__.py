"""NAT traversal cores: STUN (RFC 8489) codec and client, NAT behaviour discovery (RFC 5780),
hole punching and relay state machines.  Sans-IO."""

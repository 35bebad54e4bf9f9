"""The hybrid post-quantum authenticated handshake (docs/handshake.md).  Sans-IO."""

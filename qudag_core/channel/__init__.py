"""The AEAD-framed secure channel that follows the handshake (docs/channel.md).  Sans-IO."""

"""Model updates: versions, traffic shares, the gateway handshake, progressive policies."""

"""Discovery: mDNS, bootstrap peers, capability gossip, failure detection."""

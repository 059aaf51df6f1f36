"""The discovery server: signed records and one-time prekeys, mirrored into the DHT."""

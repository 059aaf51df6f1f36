"""The messenger: group membership, messages, crypto and the node that wires it all."""

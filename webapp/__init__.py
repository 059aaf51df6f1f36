"""The node's local UI server: JSON API, events WebSocket and the built browser app."""

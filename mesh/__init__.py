"""Everything between two machines: identities, links, gossip, sync and discovery.

The mesh knows nothing of groups or chats: a topic is an opaque id and a payload is
opaque bytes checked by a hook the layer above supplies.
"""

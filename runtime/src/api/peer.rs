//! `peer.Peer`: this node, for relays.

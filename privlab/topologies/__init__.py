"""Training protocols: each owns its loop and decides what crosses the wire."""

"""Application databases as sources of events, items and users (``recsys sources``)."""

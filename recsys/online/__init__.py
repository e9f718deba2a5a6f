"""What the served recommendations do: impressions, attribution of events to them, online
metrics with intervals. Needs numpy and SQLAlchemy only (the prediction service writes
impressions through :mod:`recsys.online.impressions`)."""

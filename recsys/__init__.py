"""recsys: a workflow-orchestrated deep-learning recommender platform."""

__version__ = "0.1.0"

"""Prefect 3 flows and deployments: thin compositions of tasks that each wrap one recsys call."""

"""Data in and out of the store: importers, synthetic data, validation, extraction."""

"""Datasets of PushT episodes: store (npz shards + manifest), collection, sequence loader."""

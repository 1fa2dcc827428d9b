"""Earmark ingest service."""

"""Earmark features service."""

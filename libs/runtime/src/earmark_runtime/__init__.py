"""Shared runtime for Earmark services: config, server bootstrap, bus, telemetry, blobs."""

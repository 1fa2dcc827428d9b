"""Imports essentia once, with its start-up INFO chatter silenced."""

from __future__ import annotations

import essentia

essentia.log.infoActive = False
essentia.log.warningActive = False

import essentia.standard as es  # noqa: E402  (after silencing the import-time log)

__all__ = ["es", "essentia"]

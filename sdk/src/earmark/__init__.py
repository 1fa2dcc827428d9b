"""Earmark client SDK: `from earmark import Earmark`."""

from .client import Earmark
from .results import Identification, Match, Submission, Track

__all__ = ["Earmark", "Identification", "Match", "Submission", "Track"]

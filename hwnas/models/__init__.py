"""Detector models built from an :class:`~hwnas.arch.Arch`."""
from hwnas.models.detector import Detector

__all__ = ["Detector"]

"""Detector models built from an :class:`~hwnas.spec.arch.Arch`."""
from hwnas.models.detector import Detector

__all__ = ["Detector"]

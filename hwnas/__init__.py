"""hwnas: hardware-aware latency tables, search and deployment for object detectors."""
__version__ = "0.1.0"

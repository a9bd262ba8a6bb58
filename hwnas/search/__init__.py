"""Two-stage multi-objective search (SM-NAS): structural, then modular, over mAP and table latency."""
from hwnas.search.runner import Search, SearchConfig

__all__ = ["Search", "SearchConfig"]

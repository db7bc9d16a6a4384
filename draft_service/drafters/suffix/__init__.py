"""SuffixDecoding (Oliaro et al., NeurIPS 2025) as the ``suffix`` drafter: token trees from the
earlier occurrences of the context in the request's own text and in a global, LRU-bounded store
of recent requests' text. ``options`` (spec syntax), ``index`` (where a context occurred),
``store`` (the global structure), ``speculate`` (occurrences to tree), ``drafter``."""
from draft_service.drafters.suffix.drafter import SuffixDrafter
from draft_service.drafters.suffix.options import SuffixOptions

__all__ = ["SuffixDrafter", "SuffixOptions"]

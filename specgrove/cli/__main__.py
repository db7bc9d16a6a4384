"""``python -m specgrove.cli``: the ``specgrove`` command (``specgrove up`` starts its children so)."""
from specgrove.cli import main

main()

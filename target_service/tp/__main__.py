"""``python -m target_service.tp``: run a worker rank (see :mod:`target_service.tp.worker`)."""
import sys

from target_service.tp.worker import main

sys.exit(main())

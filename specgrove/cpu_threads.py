"""How many intra-op CPU threads a process gets when several share one machine.

OpenMP threads that outnumber the cores wait for each other: two target replicas with two
threads each on a 2-core machine decoded about 9x slower than one (12 against 109 tokens/s at
8 clients, ``benchmarks/replicas.py``), as tensor-parallel ranks did before they split the
cores. So whoever starts several compute processes on one machine (tensor-parallel ranks,
``up --target-replicas N``) gives each its share of the cores through ``OMP_NUM_THREADS``.
"""
from __future__ import annotations

import os


def cpu_budget() -> int:
    """Cores this process may use: ``OMP_NUM_THREADS`` when set (a share someone gave it, or
    the user's limit), else the CPUs it may run on."""
    try:
        given = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        given = 0
    return given if given > 0 else len(os.sched_getaffinity(0))


def thread_share(ways: int) -> int:
    """This process's budget split ``ways`` ways, at least one thread each."""
    return max(1, cpu_budget() // max(1, ways))

"""Attention and KV-cache kernels: a Triton kernel and a plain-torch ``*_ref`` per operation.

The model never calls these directly: it receives a :class:`specgrove.kernels.backend.KernelBackend`
chosen once at start-up (see ``specgrove/kernels/backend.py``).
"""

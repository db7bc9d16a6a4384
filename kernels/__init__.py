"""Attention and KV-cache kernels: a Triton kernel and a plain-torch ``*_ref`` per operation.

The model never calls these directly: it receives a :class:`kernels.backend.KernelBackend`
chosen once at start-up (see ``kernels/backend.py``).
"""

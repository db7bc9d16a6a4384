"""EAGLE-style feature drafter: a one-layer head over the target's own hidden states.

EAGLE (Li et al. 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty";
EAGLE-2 for dynamic trees; EAGLE-3, 2025, for multi-layer features, a truncated draft
vocabulary and training-time test). ``config`` holds the head's shape, ``head`` the trainable
module, ``serving`` the paged-KV inference model, ``drafter`` the draft-service drafter.
"""

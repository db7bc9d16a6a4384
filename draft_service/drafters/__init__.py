"""Drafter implementations: ``ngram`` (prompt lookup) and ``model`` (a small causal LM)."""

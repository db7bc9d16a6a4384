"""Target service: the large model, its paged KV cache, batched tree verification."""

"""Our own llama-family forward pass over the paged KV cache, with tensor-parallel layers."""

"""Virtual context memory: pages, replacement, swap, page faults, prompt assembly, embeddings."""

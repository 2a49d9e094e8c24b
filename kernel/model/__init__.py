"""The model and its batch: engine, scheduler, backend, lean forward, attention, KV cache."""

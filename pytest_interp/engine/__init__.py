"""The engine: the one runner that calls the model (batching, attention masks, device, the finite-logits check),
the hooks that edit sites, the interventions, and the sweep engine."""

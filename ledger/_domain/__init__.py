"""The domain: models, events, the per-user aggregate, validation. No I/O."""

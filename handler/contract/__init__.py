"""The request contract, torch-free: the request type and its fields, typed errors, settings, samplers
registry, sizes, image-input checks and the admission checks, run before any work."""

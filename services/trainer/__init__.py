"""WaFL trainer service."""

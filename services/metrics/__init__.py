"""WaFL metrics service."""

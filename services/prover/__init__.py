"""WaFL prover service."""

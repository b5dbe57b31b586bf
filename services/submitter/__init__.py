"""WaFL submitter service."""

"""WaFL chain_watcher service."""

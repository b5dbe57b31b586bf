"""WaFL shared library: configuration, fixed-point arithmetic, packing, circuits, chain access."""

__version__ = "0.1.0"

"""gpufleet: a Kubernetes operator for self-hosted GPU inference fleets."""

__version__ = "0.1.0"

"""The I/O edges (Kubernetes, Prometheus, AWS), each behind a small Protocol so tests can pass fakes."""

"""Storage: dataset schemas, per-cell atomic commits, manifests, provenance."""

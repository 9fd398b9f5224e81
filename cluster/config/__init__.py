"""Configuration: the schema (omegaconf structured configs), strict YAML loading, and every check."""

"""Quantization internals: recipes, the llmcompressor run, health checks, dequantized copies."""

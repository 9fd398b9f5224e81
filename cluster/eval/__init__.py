"""Evaluation internals: engine hosts, sharded lm-eval, scoring, statistics, HumanEval, arena, text similarity."""

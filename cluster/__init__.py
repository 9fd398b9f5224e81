"""quantsweep's cluster side: plan sweep cells and run the Ray stages.

The stages (quantize, tune, evaluate, serve/load-test, datasets, report) each live in a module of
their own; `cluster.pipeline` strings them together and `python -m cluster` is the entry point.
Heavy libraries (torch, vllm, llmcompressor, lm_eval) are imported inside the stage that needs them,
so planning and config validation stay fast.
"""

__version__ = "0.1.0"

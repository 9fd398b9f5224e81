"""Small helpers the tests share (the fixtures live in conftest.py)."""

from __future__ import annotations

TINY_TASKS = ["qs_tiny_mc", "qs_tiny_gen"]


HOST = None  # this machine's profile, detected once


def host_profile():
    """This machine's processor profile (serve.host)."""
    global HOST
    if HOST is None:
        from serve.host import detect

        HOST = detect()
    return HOST


def lm_kwargs(**engine) -> dict:
    """lm-eval VLLM kwargs as the evaluation hosts use them on this machine."""
    from serve.config import EngineConfig
    from serve.engine import lm_eval_kwargs

    return lm_eval_kwargs(EngineConfig(**engine), host_profile(), tp=1, cpu=True, seed=1234)

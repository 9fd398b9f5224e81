"""Token counts and engine rates: the arithmetic under the plan's cost model (cluster/plan/cost.py).

An engine of `gpus` devices processes prompt tokens at `gpus x peak FLOP/s x prefill_mfu / (2 x
params)` and generates batched tokens at the same with `decode_mfu`; one request alone generates a
token per read of the weights at `sync_bandwidth` of the devices' memory bandwidth. Peaks and
bandwidths are conf/hardware.yaml's, efficiencies conf/cost.yaml's: assumptions, not measurements.
"""

from __future__ import annotations

import math

from cluster.config.capacity import CostConfig
from cluster.config.schema import FormatConfig, HardwareConfig, ModelConfig, SuiteConfig
from cluster.plan.placement import BYTES_PER_PARAM

CPU_PEAK_TFLOPS = 0.1  # an engine on one host core (the embedded local run)
CPU_GBPS = 20.0


def suite_tokens(
    suite: SuiteConfig, cost: CostConfig, budget: int | None, budgets: dict[str, int] | None = None
) -> tuple[float, float]:
    """(prompt tokens, generated tokens) of one pass over a suite, at most `budget` documents per task
    (`budgets`: per named task instead)."""
    prefill = gen = 0.0
    for task in suite.tasks:
        c = cost.tasks.get(task.name)
        if c is None:
            continue
        limit = (budgets or {}).get(task.name, budget)
        docs = min(c.docs, limit) if limit else c.docs
        prefill += docs * (c.doc_tokens * ((task.num_fewshot or 0) + 1) + c.choices * c.choice_tokens)
        gen += docs * min(c.gen_tokens, task.max_gen_toks)
    return prefill, gen


class Engine:
    """Rates of one engine: `gpus` devices of `hw` (None: a host core) serving `model` in `fmt`."""

    def __init__(
        self, cost: CostConfig, model: ModelConfig, fmt: FormatConfig, hw: HardwareConfig | None, gpus: int
    ):
        compute = {"fp8": "fp8", "int8": "int8"}.get(fmt.requires, "bf16")  # A16 formats compute in bf16
        peak = (hw.peak_tflops.get(compute) or hw.peak_tflops.get("bf16", 0.0)) if hw else 0.0
        flops = max(1, gpus) * (peak or CPU_PEAK_TFLOPS) * 1e12
        per_token = 2 * model.params_b * 1e9
        self.prefill = flops * cost.prefill_mfu / per_token  # tokens/s
        self.decode = flops * cost.decode_mfu / per_token
        self.weights_gb = model.params_b * BYTES_PER_PARAM[fmt.requires]
        bandwidth = max(1, gpus) * ((hw.hbm_gbps if hw else 0.0) or CPU_GBPS)
        self.step_s = self.weights_gb / (bandwidth * cost.sync_bandwidth)  # one token, one request at a time
        self.load_s = cost.engine_start_s + self.weights_gb / cost.load_gbps

    def pass_s(self, prefill: float, gen: float) -> float:
        """Seconds to prefill and generate these many tokens, batched."""
        return prefill / self.prefill + gen / self.decode

    def latency_s(self, prompt: int, output: int) -> float:
        """One request alone."""
        return prompt / self.prefill + output * self.step_s


def trial_count(n: int, rungs: int, reduction: int, asha: bool) -> list[int]:
    """Trials that reach each rung: all of them (fifo), or 1 / reduction fewer at each (ASHA)."""
    if not asha:
        return [n] * rungs
    return [max(1, math.ceil(n / reduction**i)) for i in range(rungs)]

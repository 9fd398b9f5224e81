"""Plain, unsharded lm-eval on one checkpoint, in a fresh process: the yardstick for `cluster run`.

    python -m tests.reference_eval {vllm|hf} CHECKPOINT ENGINE_ARGS_JSON TASK[,TASK...] LIMIT OUT.json

`vllm`: `lm_eval.simple_evaluate(model="vllm")` with the engine arguments the run recorded. `hf`:
lm-eval's Hugging Face backend on the checkpoint loaded as the quality gate loads it (float32;
compressed-tensors checkpoints decompressed with each Linear's scheme kept). Zero-shot, seed 1234,
tasks from the offline task directory; writes lm-eval's `results` and `samples` as JSON.
"""

from __future__ import annotations

import json
import sys

SEED = 1234


def main(backend: str, path: str, kwargs: str, tasks: str, limit: str, out: str) -> None:
    from cluster.eval.harness import reference_evaluate, task_manager
    from cluster.eval.offline import task_dir

    names, include = tasks.split(","), str(task_dir())
    if backend == "vllm":
        res = reference_evaluate(path, json.loads(kwargs), names, include, int(limit), SEED, num_fewshot=0)
    else:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from transformers import AutoTokenizer

        from cluster.quant.quality import load

        lm = HFLM(pretrained=load(path), tokenizer=AutoTokenizer.from_pretrained(path), batch_size=8)
        full = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=0,
            limit=int(limit),
            task_manager=task_manager(include),
            random_seed=SEED,
            numpy_random_seed=SEED,
            torch_random_seed=SEED,
            fewshot_random_seed=SEED,
            log_samples=True,
        )
        res = {k: full[k] for k in ("results", "samples")}
    with open(out, "w") as f:
        json.dump(res, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:])

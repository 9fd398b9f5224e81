"""Build the model organism: a small Llama that quantsweep trains itself, so it has accuracy to lose.

The random-weight tiny model (`cluster.tinymodel`) cannot show what quantization costs; this one
can. It shares the tiny model's tokenizer, chat template, question kinds ("What is a plus b?" and
word-successor recall) and lm-eval task layout (`qs_tiny_mc`, `qs_tiny_gen`), so the `tiny` suite
runs on it unchanged, but its weights are trained with plain AdamW on those questions until its
BF16 answer accuracy on held-out questions reaches `stop_accuracy`. Then a few LLM-like activation
outlier channels are added by a function-preserving rescaling (`add_outliers`): without them a
model this small shrugs off INT4 rounding, with them round-to-nearest loses accuracy and GPTQ wins
most of it back, as in large models. Everything is deterministic from the seed (one CPU thread, a
fixed data order) and built once into a cache directory keyed by the spec's hash; the final loss
and accuracy are recorded in `spec.json`.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cluster.errors import StageError
from cluster.models import tinymodel
from cluster.models.tinymodel import TinyAssets, TinySpec

Question = Callable[[random.Random], tuple[str, str]]
KINDS: tuple[Question, ...] = (tinymodel._arithmetic, tinymodel._recall)


@dataclass(frozen=True)
class OrganismSpec:
    """The organism's parameters; their hash names the cache directory."""

    seed: int = 0
    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 2048
    train_steps: int = 800  # the most steps; training stops early at stop_accuracy
    eval_every: int = 100
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    batch_size: int = 128
    docs_per_sequence: int = 1  # questions packed into one training sequence (1..n)
    val_docs: int = 256  # held-out questions that decide when training stops
    mc_docs: int = 200
    gen_docs: int = 200
    calibration_docs: int = 256
    outlier_channels: int = 16  # per norm: channels that carry LLM-like activation outliers
    outlier_scale: float = 16.0
    stop_accuracy: float = 0.99
    accuracy_target: float = 0.9
    tasks_version: int = 3  # 2: adds the held-out validation tasks; 3: fp32 stopping checks

    def key(self) -> str:
        """A short content hash of the spec."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def tiny(self) -> TinySpec:
        """The tiny-model spec with the same shape and task sizes (for the shared builders)."""
        return TinySpec(
            seed=self.seed,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            max_position_embeddings=self.max_position_embeddings,
            mc_docs=self.mc_docs,
            gen_docs=self.gen_docs,
            calibration_docs=self.calibration_docs,
        )


def _question(rng: random.Random) -> tuple[str, str]:
    """One question of either kind, with its answer."""
    return KINDS[rng.randrange(len(KINDS))](rng)


def _prompt(q: str) -> str:
    """The text before the answer, exactly as the lm-eval tasks render it."""
    return f"Question: {q}\nAnswer:"


def _tokens(tokenizer, memo: dict[str, list[int]], text: str) -> list[int]:
    if text not in memo:
        memo[text] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return memo[text]


def _sequence(
    rng: random.Random, tokenizer, memo: dict[str, list[int]], spec: OrganismSpec
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one training sequence: 1..n packed questions, loss on the answers only."""
    ids: list[int] = [tokenizer.bos_token_id] if rng.random() < 0.5 else []
    labels: list[int] = [-100] * len(ids)
    for _ in range(rng.randint(1, spec.docs_per_sequence)):
        q, a = _question(rng)
        prompt, answer = _tokens(tokenizer, memo, _prompt(q)), _tokens(tokenizer, memo, f" {a}\n")
        ids += prompt + answer
        labels += [-100] * len(prompt) + answer
    return ids, labels


def _pad(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[Any, Any, Any]:
    """Right-padded (input_ids, attention_mask, labels) tensors."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in rows])
    mask = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows])
    labels = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in rows])
    return ids, mask, labels


def _batches(tokenizer, spec: OrganismSpec) -> Iterator[tuple[Any, Any, Any]]:
    """Training batches in a fixed order (their own seed)."""
    rng, memo = random.Random(spec.seed + 3), dict[str, list[int]]()
    while True:
        rows = [_sequence(rng, tokenizer, memo, spec) for _ in range(spec.batch_size)]
        yield _pad(rows, tokenizer.pad_token_id)


def _val_set(tokenizer, spec: OrganismSpec) -> tuple[Any, Any, Any]:
    """Held-out questions (a seed no other piece uses), each with and without BOS, as one batch."""
    rng, memo, rows = random.Random(spec.seed + 4), dict[str, list[int]](), []
    for _ in range(spec.val_docs):
        q, a = _question(rng)
        prompt, answer = _tokens(tokenizer, memo, _prompt(q)), _tokens(tokenizer, memo, f" {a}\n")
        for bos in ([tokenizer.bos_token_id], []):
            rows.append((bos + prompt + answer, [-100] * len(bos + prompt) + answer))
    return _pad(rows, tokenizer.pad_token_id)


def accuracy(model, batch, bf16_weights: bool = False) -> float:
    """Share of questions whose every answer token is the argmax (teacher-forced), computed in fp32.

    With `bf16_weights` the weights are first rounded to bf16, as the checkpoint stores them. fp32
    compute keeps this fast on every host (bf16 matmuls have no hardware path on AVX2-only CPUs).
    """
    import copy

    import torch

    ids, mask, labels = batch
    probe = copy.deepcopy(model).eval()
    if bf16_weights:
        probe = probe.to(torch.bfloat16).to(torch.float32)
    with torch.no_grad():
        pred = probe(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    ok = (pred == target) | (target == -100)
    return ok.all(dim=1).float().mean().item()


def _lr(step: int, spec: OrganismSpec) -> float:
    """Linear warmup, then cosine decay to a tenth over train_steps."""
    import math

    if step < spec.warmup_steps:
        return spec.learning_rate * (step + 1) / spec.warmup_steps
    frac = (step - spec.warmup_steps) / max(1, spec.train_steps - spec.warmup_steps)
    return spec.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, frac))))


def _fit(model, tokenizer, spec: OrganismSpec, val, log: Callable[[str], None]) -> tuple[int, float, float]:
    """AdamW on the fixed batch order until the bf16 validation accuracy reaches stop_accuracy."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
    batches = _batches(tokenizer, spec)
    loss, acc, step = float("nan"), 0.0, 0
    model.train()
    for step in range(1, spec.train_steps + 1):
        ids, mask, labels = next(batches)
        for group in opt.param_groups:
            group["lr"] = _lr(step - 1, spec)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = out.loss.item()
        if step % spec.eval_every == 0 or step == spec.train_steps:
            acc = accuracy(model, val)
            log(f"training: step {step} loss {loss:.4f} accuracy {acc:.3f}")
            if acc >= spec.stop_accuracy:
                break
    return step, loss, acc


def add_outliers(model, spec: OrganismSpec) -> None:
    """Give the inputs of every quantized linear a few large channels, without changing the function.

    LLMs carry a few residual channels whose normalised activations are far larger than the rest;
    they are what makes per-group INT4 rounding lose accuracy and what GPTQ's Hessian protects. A
    model trained for minutes has none, so they are made here: multiply some RMSNorm gains by
    `outlier_scale` and divide the matching input columns of the linears that read the norm by it
    (SmoothQuant's migration, run backwards). BF16 accuracy is measured after this step.
    """
    import torch

    rng = random.Random(spec.seed + 5)
    with torch.no_grad():
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for norm, readers in (
                (layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj)),
                (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj)),
            ):
                channels = rng.sample(range(norm.weight.numel()), spec.outlier_channels)
                norm.weight[channels] *= spec.outlier_scale
                for linear in readers:
                    linear.weight[:, channels] /= spec.outlier_scale


def train(model_dir: Path, spec: OrganismSpec, log: Callable[[str], None] = lambda _: None) -> dict:
    """Train the random-init checkpoint in model_dir in place; return loss, accuracy and wall time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-for-bit repeatable, and polite to whatever else runs here
    try:
        torch.manual_seed(spec.seed)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        val, start = _val_set(tokenizer, spec), time.perf_counter()
        step, loss, _ = _fit(model, tokenizer, spec, val, log)
        add_outliers(model, spec)
        acc, wall = accuracy(model, val, bf16_weights=True), time.perf_counter() - start
        log(f"after outliers: accuracy {acc:.3f} (bf16 weights)")
        if acc < spec.accuracy_target:
            raise StageError(
                f"the organism reached bf16 accuracy {acc:.3f} after {step} steps, below "
                f"accuracy_target {spec.accuracy_target}: raise train_steps or learning_rate"
            )
        model.to(torch.bfloat16).save_pretrained(model_dir, safe_serialization=True)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(threads)
    return {"steps": step, "final_loss": loss, "bf16_val_accuracy": acc, "train_wall_s": round(wall, 1)}


def _calibration(spec: OrganismSpec) -> list[dict]:
    """Instruction-style calibration text from the training distribution (its own seed)."""
    rng = random.Random(spec.seed + 2)
    rows = []
    for _ in range(spec.calibration_docs):
        docs = [_question(rng) for _ in range(rng.randint(1, spec.docs_per_sequence))]
        rows.append({"text": "".join(f"{_prompt(q)} {a}\n" for q, a in docs)})
    return rows


def build(
    cache_dir: Path | str, spec: OrganismSpec | None = None, log: Callable[[str], None] = lambda _: None
) -> TinyAssets:
    """Build (or find) the organism's assets under cache_dir; atomic, so never half-written."""
    spec = spec or OrganismSpec()

    def fill(tmp: Path) -> None:
        tiny = spec.tiny()
        tokenizer = tinymodel._train_tokenizer(tinymodel.corpus(random.Random(spec.seed), 4000), tiny)
        tinymodel._build_model(tiny, tokenizer, tmp / "model")
        report = train(tmp / "model", spec, log)
        tinymodel.write_all_tasks(tmp / "tasks", tiny)
        tinymodel._write_jsonl(tmp / "calibration" / "instruct.jsonl", _calibration(spec))
        (tmp / "spec.json").write_text(json.dumps({**asdict(spec), "training": report}, indent=2))

    return tinymodel.build_atomically(Path(cache_dir) / f"organism-{spec.key()}", fill, "organism")

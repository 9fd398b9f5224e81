"""Build the tiny local Llama, its tokenizer, calibration text and lm-eval tasks.

Nothing may come from a hub here, so quantsweep makes its own model organism: a small Llama whose
dimensions are multiples of 128 (so INT4 groups of 128 work), a byte-level BPE tokenizer trained on
a synthetic corpus, a Llama-3-style chat template, instruction-style calibration text, and two
lm-eval tasks (one log-likelihood multiple choice, one generate-until) as local JSON data. All of it
is deterministic from a seed and built once into a cache directory keyed by its parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from cluster.errors import StageError

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|pad|>",
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# The tuning tasks and a held-out pair with fresh documents (the validation suite `tiny_val`).
TASK_NAMES = ("qs_tiny_mc", "qs_tiny_gen", "qs_tiny_mc_val", "qs_tiny_gen_val")
VALIDATION_SEED_OFFSET = 6
WORDS = (
    "alpha bravo cedar delta ember falcon garnet harbor iris juniper kestrel lumen maple nova onyx "
    "pine quartz raven sierra tulip umber violet willow xenon yarrow zephyr river stone cloud light"
).split()


@dataclass(frozen=True)
class TinySpec:
    """The builder's parameters; their hash names the cache directory."""

    seed: int = 0
    vocab_size: int = 512
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 2048
    mc_docs: int = 48
    gen_docs: int = 24
    calibration_docs: int = 256
    tasks_version: int = 2  # 2: adds the held-out validation tasks

    def key(self) -> str:
        """A short content hash of the spec."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class TinyAssets:
    """Where the built pieces live."""

    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def tasks_dir(self) -> Path:
        return self.root / "tasks"

    @property
    def instruct_file(self) -> Path:
        return self.root / "calibration" / "instruct.jsonl"


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    """A question with a checkable answer."""
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    return f"What is {a} plus {b}?", str(a + b)


def _recall(rng: random.Random) -> tuple[str, str]:
    """A key -> value question over the word list."""
    i = rng.randrange(len(WORDS))
    return f"Which word comes after {WORDS[i]}?", WORDS[(i + 1) % len(WORDS)]


def corpus(rng: random.Random, n: int) -> list[str]:
    """Synthetic instruction-style text for the tokenizer and for calibration."""
    lines = []
    for _ in range(n):
        q, a = (_arithmetic if rng.random() < 0.5 else _recall)(rng)
        filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16)))
        lines.append(f"Question: {q}\nAnswer: {a}\n{filler}.")
    return lines


def _train_tokenizer(texts: list[str], spec: TinySpec):
    """Train a byte-level BPE tokenizer and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|pad|>",
        model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_model(spec: TinySpec, tokenizer, out: Path) -> None:
    """Create a random-init Llama in bf16 and save it with its generation config."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, do_sample=False
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _task_rows(rng: random.Random, spec: TinySpec) -> tuple[list[dict], list[dict]]:
    """Multiple-choice and generation documents with known answers."""
    mc = []
    for i in range(spec.mc_docs):
        q, a = (_arithmetic if i % 2 == 0 else _recall)(rng)
        pool = [str(int(a) + d) for d in (-2, -1, 1, 2)] if a.isdigit() else [w for w in WORDS if w != a]
        choices = [a] + rng.sample(pool, 3)
        rng.shuffle(choices)
        mc.append({"id": i, "question": q, "choices": choices, "label": choices.index(a)})
    gen = []
    for i in range(spec.gen_docs):
        q, a = (_arithmetic if i % 2 == 0 else _recall)(rng)
        gen.append({"id": i, "question": q, "answer": a})
    return mc, gen


def _task_yaml(name: str, data_file: Path, body: dict) -> dict:
    """Common lm-eval task fields for a local JSON dataset."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        **body,
        "metadata": {"version": 1.0},
    }


def write_all_tasks(tasks_dir: Path, spec: TinySpec) -> None:
    """The tuning tasks (seed + 1) and the held-out validation tasks (their own seed)."""
    _write_tasks(tasks_dir, *_task_rows(random.Random(spec.seed + 1), spec))
    _write_tasks(tasks_dir, *_task_rows(random.Random(spec.seed + VALIDATION_SEED_OFFSET), spec), "_val")


def _write_tasks(tasks_dir: Path, mc: list[dict], gen: list[dict], suffix: str = "") -> None:
    """Write the two lm-eval task configs and their data (absolute paths, read by TaskManager)."""
    mc_file, gen_file = tasks_dir / f"qs_tiny_mc{suffix}.jsonl", tasks_dir / f"qs_tiny_gen{suffix}.jsonl"
    _write_jsonl(mc_file, mc)
    _write_jsonl(gen_file, gen)
    mc_task = _task_yaml(
        f"qs_tiny_mc{suffix}",
        mc_file,
        {
            "output_type": "multiple_choice",
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{label}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        },
    )
    gen_task = _task_yaml(
        f"qs_tiny_gen{suffix}",
        gen_file,
        {
            "output_type": "generate_until",
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False, "temperature": 0.0},
            "filter_list": [
                {"name": "strip", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}
            ],
            "metric_list": [
                {
                    "metric": "exact_match",
                    "aggregation": "mean",
                    "higher_is_better": True,
                    "ignore_case": True,
                    "ignore_punctuation": True,
                }
            ],
        },
    )
    for task in (mc_task, gen_task):
        (tasks_dir / f"{task['task']}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))


def build_atomically(final: Path, fill: Callable[[Path], None], what: str) -> TinyAssets:
    """Run `fill(tmp)` in a temp dir beside `final`, then rename it into place (never half-written).

    A finished directory (with `DONE`) is returned as is; if another process finishes first, its
    copy is kept.
    """
    if (final / "DONE").is_file():
        return TinyAssets(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        fill(tmp)
        (tmp / "DONE").write_text("ok\n")
        _fix_task_paths(tmp, final)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first: keep theirs
            if not (final / "DONE").is_file():
                raise
    except OSError as exc:
        raise StageError(f"could not build the {what} under {final.parent}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TinyAssets(final)


def build(cache_dir: Path | str, spec: TinySpec | None = None) -> TinyAssets:
    """Build (or find) the tiny model's assets under cache_dir; atomic, so never half-written."""
    spec = spec or TinySpec()

    def fill(tmp: Path) -> None:
        tokenizer = _train_tokenizer(corpus(random.Random(spec.seed), 4000), spec)
        _build_model(spec, tokenizer, tmp / "model")
        write_all_tasks(tmp / "tasks", spec)
        calib = corpus(random.Random(spec.seed + 2), spec.calibration_docs)
        _write_jsonl(tmp / "calibration" / "instruct.jsonl", [{"text": t} for t in calib])
        (tmp / "spec.json").write_text(json.dumps(asdict(spec), indent=2))

    return build_atomically(Path(cache_dir) / f"tiny-llama-{spec.key()}", fill, "tiny model")


def _fix_task_paths(tmp: Path, final: Path) -> None:
    """Task YAMLs hold absolute data paths: point them at the final directory, not the temp one."""
    for path in (tmp / "tasks").glob("*.yaml"):
        path.write_text(path.read_text().replace(str(tmp), str(final)))

"""Bring your own model as a GGUF file: convert it once into a bf16 checkpoint and verify it.

A model entry may name a GGUF file by path or inside an installed Python package
(`pkg:<package>/<file>`; the package is located, never imported). transformers dequantizes the
file; quantsweep saves the result as a plain bf16 Hugging Face checkpoint under
`<cache>/gguf-<sha256 prefix>` (so a file is converted once, whatever its name) and refuses to
use it unless it passes three checks against the model transformers reads from the GGUF file
itself: the saved tokenizer encodes sample texts to the same ids and decodes them back unchanged;
the perplexity of held-out text is within `MAX_PPL_RATIO` of the GGUF model's; a greedy answer
to a question is not empty. Nothing here is specific to one model family.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cluster.config.calibration import package_path
from cluster.errors import ConfigError, StageError
from cluster.store.datasets import sha256

MAX_PPL_RATIO = 1.1
# texts the tokenizer must encode to the GGUF tokenizer's ids and decode back unchanged
SAMPLE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "  Leading spaces, tabs\tand\nnew lines.\n",
    "Numbers 0 1 42 3.14159 -7 1,000,000 and 2026-12-01.",
    "def f(x):\n    return {'a': [x, x ** 2]}  # code",
    "Unicode: café, naïve, Straße, 東京, Ωμέγα, emoji 🙂.",
)
# held-out prose for the perplexity check (written for this file, so in no model's training data)
HELD_OUT = (
    "On the morning the ferry stopped running, the village council met in the school hall to decide "
    "how the children would reach the mainland. The fisherman offered his boat for the first week, "
    "and the baker said she would drive the older pupils to the bridge on the far side of the bay. "
    "By the end of the meeting they had written a timetable on the blackboard, with a name beside "
    "every crossing, and the head teacher promised to send a copy to each family before the evening."
)
QUESTION = "What is the capital of France?"


@dataclass(frozen=True)
class Reference:
    """What the model read straight from the GGUF file produces: the yardstick for the copy."""

    token_ids: list[list[int]]
    special_tokens: dict[str, str | None]
    perplexity: float
    answer: str


def resolve(spec: str) -> Path:
    """The GGUF file a model entry names: `pkg:<package>/<relative path>` or a filesystem path."""
    try:
        path = package_path(spec)
    except ConfigError as exc:
        raise ConfigError(f"gguf {exc}") from None
    if not path.is_file() or path.suffix != ".gguf":
        raise ConfigError(f"gguf '{spec}': '{path}' is not a .gguf file")
    return path


def file_stamp(spec: str) -> dict[str, int]:
    """The file's size and mtime: cheap enough for plan-time keys (the cache itself uses the hash)."""
    st = resolve(spec).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _specials(tok: Any) -> dict[str, str | None]:
    return {k: getattr(tok, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}


def _perplexity(model: Any, tok: Any, text: str) -> float:
    import torch

    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.float().item()
    return math.exp(loss) if math.isfinite(loss) else math.inf


def _answer(model: Any, tok: Any, max_new_tokens: int = 24) -> str:
    import torch

    if getattr(tok, "chat_template", None):
        msgs = [{"role": "user", "content": QUESTION}]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    else:
        prompt = f"Question: {QUESTION}\nAnswer:"
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id
        )
    return str(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)).strip()


def reference(model: Any, tok: Any) -> Reference:
    """Score the source model (read from the GGUF file) on the fixed texts."""
    ids = [list(tok.encode(t, add_special_tokens=False)) for t in SAMPLE_TEXTS]
    return Reference(ids, _specials(tok), _perplexity(model, tok, HELD_OUT), _answer(model, tok))


def verify(model_dir: Path, ref: Reference, max_ratio: float = MAX_PPL_RATIO) -> dict[str, Any]:
    """Check a converted checkpoint against the reference; StageError naming every failed check."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problems: list[str] = []
    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # a tokenizer that does not even load is one more failed check
        raise StageError(f"converted model {model_dir}: the tokenizer does not load ({exc})") from exc
    for text, want in zip(SAMPLE_TEXTS, ref.token_ids, strict=True):
        got = list(tok.encode(text, add_special_tokens=False))
        if got != want:
            problems.append(f"tokenizer encodes {text[:30]!r} to other ids than the GGUF tokenizer")
        elif tok.decode(got) != text:
            problems.append(f"tokenizer does not decode {text[:30]!r} back to itself")
    if _specials(tok) != ref.special_tokens:
        problems.append(f"special tokens {_specials(tok)} differ from the GGUF's {ref.special_tokens}")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ppl = _perplexity(model, tok, HELD_OUT)
    ratio = ppl / ref.perplexity if math.isfinite(ppl) else math.inf
    if not ratio <= max_ratio:
        problems.append(
            f"perplexity {ppl:.4g} on held-out text is {ratio:.3g}x the GGUF model's {ref.perplexity:.4g} "
            f"(allowed {max_ratio}x)"
        )
    answer = _answer(model, tok) if not problems else ""
    if not problems and not answer:
        problems.append(f"greedy answer to {QUESTION!r} is empty")
    if problems:
        raise StageError(f"converted model {model_dir} refused: " + "; ".join(problems))
    return {"perplexity": ppl, "ratio": ratio, "answer": answer, "reference": asdict(ref)}


def _drop_quantizer(model: Any) -> Any:
    """The GGUF model is already dequantized; transformers' GGUF quantizer only blocks saving it."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def convert(
    spec: str, cache_dir: Path | str, log: Callable[[str], None] = print, max_ratio: float = MAX_PPL_RATIO
) -> Path:
    """The verified bf16 checkpoint of a GGUF file, converted on first use and cached by its hash."""
    from cluster.models.tinymodel import build_atomically

    path = resolve(spec)
    digest = sha256(path)
    final = Path(cache_dir) / f"gguf-{digest[:16]}"

    def fill(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log(f"converting {path.name} (sha256 {digest[:16]}) to a bf16 checkpoint")
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        ref = reference(model.eval(), tok)
        _drop_quantizer(model).to(torch.bfloat16).save_pretrained(tmp / "model")
        tok.save_pretrained(tmp / "model")
        del model
        report = verify(tmp / "model", ref, max_ratio)
        report.update(source=spec, file=str(path), sha256=digest)
        (tmp / "verification.json").write_text(json.dumps(report, indent=2))
        log(f"verified: perplexity ratio {report['ratio']:.4f}, answer {report['answer'][:60]!r}")

    return build_atomically(final, fill, "converted GGUF model").root / "model"

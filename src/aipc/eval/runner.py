"""`evaluate()`: open a model (and its reference), tokenize the text once, score both on the same windows."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aipc.errors import UsageError
from aipc.eval import DEFAULT_TEXT

DEFAULT_MAX_TOKENS = 4096
DEFAULT_WINDOW = 512
# Scoring needs every position's logits, which the NPU's static pipeline does not return: auto means GPU, then CPU.
AUTO_DEVICES = "gpu,cpu"


@dataclass(frozen=True)
class Evaluated:
    """One model as evaluated: what it is and where it ran."""

    model: str  # as asked for: a name, name@variant or path
    backend: str
    device: str
    path: str
    perplexity: float
    vocab: int


@dataclass(frozen=True)
class Evaluation:
    """The result of `evaluate`: perplexity, and against a reference, mean KL(reference || model) and agreement."""

    text: str
    tokens_scored: int
    window: int
    stride: int
    model: Evaluated
    reference: Evaluated | None = None
    kl_mean: float | None = None
    kl_max: float | None = None
    agreement: float | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2) + "\n"


def read_text(path: str | Path | None) -> tuple[Path, str]:
    """The text to score: a UTF-8 file, or the shipped one."""
    file = Path(path).expanduser() if path else DEFAULT_TEXT
    hint = f"--text takes a UTF-8 text file; the default is the shipped {DEFAULT_TEXT.name}"
    if not file.is_file():
        raise UsageError(f"no such text file: {file}: {hint}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{file} is not UTF-8 text: {hint}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}: {hint}") from None
    if not text.strip():
        raise UsageError(f"{file} is empty: there is nothing to score")
    return file, text


def evaluate(
    model: str | None = None,
    text: str | Path | None = None,
    *,
    reference: str | None = "auto",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    window: int = DEFAULT_WINDOW,
    backend: str = "auto",
    device: str = "auto",
    reference_backend: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Score `model` on `text` (a path; None is the shipped text), and against `reference` when there is one.

    `reference`: "auto" finds the model's own weights at full precision (`eval.reference`; where there are
    none, perplexity alone and a note says why), "none" measures perplexity alone, anything else is a model
    (with the same tokenizer), opened with `reference_backend`. `max_tokens` tokens from the start of the text
    are scored, in windows of `window` tokens that overlap by half."""
    from aipc.engine.model import load
    from aipc.eval import metrics
    from aipc.eval.reference import default_reference

    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise UsageError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise UsageError(f"window must be an integer >= 2 (tokens per forward pass), got {window!r}")
    file, content = read_text(text)
    device = AUTO_DEVICES if device == "auto" else device
    say = progress or (lambda message: None)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        say("loading the model")
        opened = stack.enter_context(load(model, backend=backend, device=device))
        scorer = opened.scorer()
        ref = ref_scorer = spec = None
        notes = []
        spec, ref_backend = (None, "") if reference in (None, "", "none") else (reference, reference_backend)
        if reference == "auto":
            say("finding the reference")
            found = default_reference(opened.info)
            spec, ref_backend = found.spec, found.backend
            notes.append(f"reference: {found.why}" if spec else f"no KL: {found.why}")
        if spec is not None:
            say("loading the reference")
            ref = stack.enter_context(load(spec, backend=ref_backend, device=AUTO_DEVICES))
            ref_scorer = ref.scorer()
        ids = _token_ids(content, opened, ref, max_tokens)
        size = min([window, *(m.info.context_length for m in (opened, ref) if m and m.info.context_length)])
        stride = max(1, size // 2)
        scores = metrics.score(
            ids,
            scorer,
            ref_scorer,
            size=size,
            stride=stride,
            progress=lambda done, total: say(f"scoring window {done}/{total}"),
        )
    if ref is not None and scores.vocab != scores.reference_vocab:
        notes.append(
            f"vocabularies differ ({scores.reference_vocab} vs {scores.vocab}): compared over the first "
            f"{min(scores.vocab, scores.reference_vocab or 0)} ids, each side renormalized"
        )
    if size < window:
        notes.append(f"window shrunk to the context: {size} tokens")
    return Evaluation(
        text=str(file),
        tokens_scored=scores.tokens,
        window=size,
        stride=stride,
        model=_evaluated(model, opened, scores.perplexity, scores.vocab),
        reference=None if ref is None else _evaluated(spec, ref, scores.reference_perplexity, scores.reference_vocab),
        kl_mean=scores.kl_mean,
        kl_max=scores.kl_max,
        agreement=scores.agreement,
        seconds=round(time.perf_counter() - started, 2),
        notes=notes,
    )


def _token_ids(text: str, model, reference, max_tokens: int) -> list[int]:
    """The text's first `max_tokens` + 1 token ids (the first is context only), tokenized once by the reference
    when there is one; the model's own tokenizer must agree, or the comparison would be meaningless."""
    ids = _tokenize(reference or model, text, max_tokens + 1)
    if reference is not None:
        mine = _tokenize(model, text, max_tokens + 1)
        if mine != ids:
            at = next((i for i, (a, b) in enumerate(zip(mine, ids, strict=False)) if a != b), None)
            where = f"token {at}: {ids[at]} vs {mine[at]}" if at is not None else f"lengths {len(ids)} vs {len(mine)}"
            raise UsageError(
                f"{model.info.name} and the reference {reference.info.name} tokenize the text differently "
                f"(first difference at {where}): KL and agreement need one tokenizer; pass a --reference that shares "
                "the model's tokenizer, or --reference none"
            )
    if len(ids) < 2:
        raise UsageError(f"the text is {len(ids)} token long: scoring needs at least 2")
    return ids


_MARGIN = 16  # tokens past the cut that are dropped: a word cut in two tokenizes differently


def _tokenize(model, text: str, n: int) -> list[int]:
    """The first `n` token ids of `text`, tokenizing only as much of it as that needs.

    Besides being quicker, this keeps long texts away from tokenizers that silently cap their output: OpenVINO's
    tokenizer for GGUF files keeps the last 8192 tokens of a longer input. A cap that still bites is caught by
    comparing the start with the tokens of the text's first words."""
    chars = int(4.5 * (n + _MARGIN)) + 256
    while True:
        piece = _whole_words(text, chars)
        ids = [int(t) for t in model.tokenize(piece)]
        if len(ids) >= n + _MARGIN or len(piece) == len(text):
            break
        chars = int(chars * 1.5)
    head = [int(t) for t in model.tokenize(_whole_words(text, 2000))]
    check = max(0, min(len(head), len(ids)) - _MARGIN)
    if ids[:check] != head[:check]:
        info = model.info
        raise UsageError(
            f"{info.name} on {info.backend} tokenizes a long text differently from its start (its tokenizer "
            f"truncates long inputs, keeping {len(ids)} tokens): score fewer tokens with --max-tokens"
        )
    return ids[:n]


def _whole_words(text: str, chars: int) -> str:
    """The first `chars` characters of `text`, cut after a space or newline (the whole text if it is shorter)."""
    if chars >= len(text):
        return text
    cut = max(text.rfind(" ", 0, chars), text.rfind("\n", 0, chars))
    return text[: cut + 1] if cut > 0 else text[:chars]


def _evaluated(spec: str | None, model, perplexity: float, vocab: int) -> Evaluated:
    info = model.info
    return Evaluated(spec or info.name, info.backend, info.device, info.path, perplexity, vocab)

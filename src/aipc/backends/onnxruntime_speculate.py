"""Speculative decoding on ONNX Runtime GenAI: n-gram lookup through `GeneratorParams.set_speculative_options`,
and draft models through a composite `genai_config.json` (model type `speculative`, with `model.draft`).

The runtime checks the drafts and reports what it proposed and accepted (`Generator.get_speculative_stats`).
A lookup miss costs nothing here (the runtime takes a plain step), so only wrong drafts cost; options are fixed
for a generator's lifetime, so `auto` decides per request (`speculate.Governor`), from the step costs this
module measures and the lookup acceptance measured on earlier answers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from aipc.backends import speculate
from aipc.store import paths
from aipc.store.resolve import ModelSource

# ONNX Runtime GenAI's n-gram option counts the drafted position: ngram_size N matches the last N - 1 tokens,
# and only that many (it does not back off to shorter matches as aipc's own lookup does). Matching 2 tokens
# drafted where 3 missed: on the embedded model copying a paragraph at penalty 1, `auto` went from 1.29x to
# 1.8-2.0x plain decoding (docs/benchmarks.md); at its default penalty `auto` drafts nothing either way.
NGRAM_SIZE = 3
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def lookup_options(width: int) -> dict[str, object]:
    return {"ngram_size": NGRAM_SIZE, "max_draft_tokens": width}


def composite_folder(main: ModelSource, draft: ModelSource) -> Path:
    """A folder whose genai_config.json runs `main` with `draft` as its draft model, made once per pair in the
    cache. The runtime refuses model paths that leave the folder, so `target/` and `draft/` hold links to the
    two models' files; the tokenizer files are main's."""
    key = hashlib.sha256(f"{main.path.resolve()}\n{draft.path.resolve()}".encode()).hexdigest()[:16]
    folder = paths.cache_dir("onnxruntime-draft") / f"{main.path.name}-{draft.path.name}-{key}"
    if (folder / "genai_config.json").is_file():
        return folder
    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    main_cfg = json.loads((main.path / "genai_config.json").read_text())
    draft_cfg = json.loads((draft.path / "genai_config.json").read_text())
    for sub, source in (("target", main.path), ("draft", draft.path)):
        (staging / sub).mkdir(parents=True)
        for item in source.resolve().iterdir():
            if item.is_file():
                (staging / sub / item.name).symlink_to(item)
    model = dict(main_cfg["model"])
    model["type"] = "speculative"
    for key, sub, cfg in (("decoder", "target", main_cfg), ("draft", "draft", draft_cfg)):
        decoder = cfg["model"]["decoder"]
        model[key] = {**decoder, "filename": f"{sub}/{decoder['filename']}"}
    config = {**main_cfg, "model": model, "speculative": {"max_draft_tokens": speculate.DEFAULT_WIDTH}}
    (staging / "genai_config.json").write_text(json.dumps(config, indent=2))
    for name in _TOKENIZER_FILES:
        if (main.path / name).is_file():
            shutil.copyfile(main.path / name, staging / name)
    try:
        staging.rename(folder)
    except OSError:  # made meanwhile by another process
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def vocab_size(source: ModelSource) -> int:
    return int(json.loads((source.path / "genai_config.json").read_text())["model"]["vocab_size"])


def check_draft(main: ModelSource, main_tokenizer, draft: ModelSource, name: str) -> None:
    """Refuse a draft model whose tokenizer differs from the model's: the vocabulary sizes in the two configs
    (before the runtime sees the pair), then, with `main_tokenizer`, how both tokenize and decode a probe."""
    import numpy as np

    def side(size: int, tokenizer) -> tuple:
        decode = lambda ids: tokenizer.decode(np.asarray(ids, dtype=np.int32))  # noqa: E731
        return (size, lambda t: list(tokenizer.encode(t)), decode)

    if main_tokenizer is None:
        same = (vocab_size(main), lambda t: [], lambda ids: "")
        speculate.check_same_tokenizer(name, same, (vocab_size(draft), *same[1:]))
        return
    import onnxruntime_genai as og

    draft_tokenizer = og.Tokenizer(og.Model(str(draft.path)))
    speculate.check_same_tokenizer(
        name, side(vocab_size(main), main_tokenizer), side(vocab_size(draft), draft_tokenizer)
    )


class Costs:
    """Turns a generation's timings and the runtime's counters into step-cost observations."""

    def __init__(self, governor: speculate.Governor) -> None:
        self.governor = governor

    def plain(self, times: list[float]) -> None:
        if len(times) > 2:
            self.governor.costs.observe(1, (times[-1] - times[0]) / (len(times) - 1))

    def speculative(self, before: dict, after: dict) -> speculate.Counts:
        """Drafted and accepted tokens between two stats snapshots; the verification passes' mean cost."""
        diff = {k: after.get(k, 0) - before.get(k, 0) for k in ("draft_tokens_proposed", "draft_tokens_accepted")}
        passes = after.get("target_verify_forward_passes", 0) - before.get("target_verify_forward_passes", 0)
        ms = after.get("total_target_verify_ms", 0.0) - before.get("total_target_verify_ms", 0.0)
        rounds = after.get("rounds", 0) - before.get("rounds", 0)
        if passes > 0 and ms > 0 and rounds > 0:
            drafts = round(diff["draft_tokens_proposed"] / rounds)
            self.governor.costs.observe(1 + max(drafts, 1), ms / passes / 1000)
        return speculate.Counts(int(diff["draft_tokens_proposed"]), int(diff["draft_tokens_accepted"]))

"""The backend boundary: a small Protocol every runtime implements, and what crosses it."""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from time import perf_counter as _now
from typing import Protocol

from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.engine.events import Finished, TextDelta
from aipc.store.resolve import ModelSource


@dataclass(frozen=True)
class DeviceInfo:
    """A device a backend can use here. `name` is aipc's (cpu, gpu.0, npu); `runtime_name` the runtime's."""

    name: str
    runtime_name: str
    description: str
    emulated: bool = False


@dataclass(frozen=True)
class ModelInfo:
    """What the engine needs to know about an opened model to format prompts and report."""

    name: str
    backend: str
    device: str
    path: str
    chat_template: str | None
    bos_token: str = ""
    eos_token: str = ""
    max_prompt_tokens: int | None = None
    context_length: int | None = None  # prompt + answer tokens the model (or pipeline) holds, when known
    # How many generations may run at once (the server sizes its slots from it); 1 for a single pipeline.
    parallel: int = 1
    # Strings the tokenizer turns into control tokens wherever they appear in text (`<|im_end|>`, `<|user|>`):
    # the engine keeps message content from producing them (see `aipc.engine.prompt`).
    special_tokens: frozenset[str] = frozenset()
    # The stored variant that was opened (`smollm2:135m@openvino-int8`), or the name for files outside the store.
    ref: str = ""


class Backend(Protocol):
    """An opened model on one device. Opened by its `BackendType.load`, used by the engine alone.

    Optional, found by `getattr` (None where a backend cannot): `reset_cache()`, and `generate_choices(prompt,
    config, n, cancel)`, n sampled answers from one generation as a list of n finished item iterators."""

    info: ModelInfo

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, adding no BOS/EOS (chat templates write their own); control-token strings in
        `text` become control tokens (the engine escapes them in message content before it gets here)."""
        ...

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of `ids`, control tokens included as their strings."""
        ...

    def generate(
        self, prompt: Sequence[int], config: GenerationConfig, cancel: threading.Event
    ) -> Iterator[TextDelta | Finished]:
        """Stream the continuation of the prompt's token ids; the last item is `Finished`."""
        ...

    def close(self) -> None: ...


class BackendType(Protocol):
    """A runtime: which model formats and devices it handles, and how to open a model."""

    name: str
    formats: tuple[str, ...]

    def devices(self) -> list[DeviceInfo]: ...

    def load(self, source: ModelSource, config: LoadConfig, device: DeviceInfo) -> Backend: ...


_END = object()


def stream_from_callback(
    run: Callable[[Callable[[str], bool]], Finished], cancel: threading.Event
) -> Iterator[TextDelta | Finished]:
    """Bridge a runtime that pushes text through a callback into a generator, once for all backends.

    `run(on_text)` blocks until generation ends and returns `Finished`; `on_text(text)` returns True when the
    runtime should stop. The runtime works in a thread; the consumer reads a queue. If the consumer stops
    early (Ctrl-C, a closed HTTP stream, `break`), `cancel` is set and the runtime is joined before returning.
    """
    q: queue.SimpleQueue = queue.SimpleQueue()
    put = q.put

    def on_text(text: str) -> bool:
        put(TextDelta(text, _now()))
        return cancel.is_set()

    def worker() -> None:
        try:
            put(run(on_text))
        except BaseException as exc:  # handed to the consumer thread, raised there
            put(exc)
        put(_END)

    thread = threading.Thread(target=worker, name="aipc-generate", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()
        thread.join()


def end_of_turn_ids(encode: Callable[[str], list[int]], decode: Callable[[list[int]], str]) -> set[int]:
    """Ids of the end-of-turn token strings (`template.END_OF_TURN_STRINGS`) that are single tokens here."""
    from aipc.engine.template import END_OF_TURN_STRINGS

    ids = set()
    for text in END_OF_TURN_STRINGS:
        enc = encode(text)
        if len(enc) == 1 and decode(enc) == text:
            ids.add(int(enc[0]))
    return ids


# What a control token looks like: `<|im_end|>`, `<s>`, `</s>`, `<end_of_turn>`, `[INST]`. Vocabularies also hold
# added tokens that are ordinary text (whitespace runs, words); those cannot forge a turn and are left alone.
_MARKUP = re.compile(r"^(<[^<>\s]{1,64}>|\[/?[A-Z_]{2,32}\])$")


def markup_tokens(strings) -> frozenset[str]:
    """The strings among `strings` that look like control-token markup."""
    return frozenset(s for s in strings if isinstance(s, str) and _MARKUP.match(s))


def folder_special_tokens(folder) -> frozenset[str] | None:
    """The added tokens a Hugging Face-style folder's tokenizer.json declares (its tokenizer matches them as
    whole tokens anywhere in text), or None when the folder has no tokenizer.json."""
    import json
    from pathlib import Path

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        added = json.loads(path.read_text(encoding="utf-8")).get("added_tokens") or []
    except (OSError, ValueError, AttributeError):
        return None
    return markup_tokens(t.get("content") for t in added if isinstance(t, dict))


def vocab_special_tokens(
    vocab: dict, encode: Callable[[str], list[int]], decode_plain: Callable[[list[int]], str]
) -> frozenset[str]:
    """Control tokens found in a vocabulary: markup-shaped entries that the tokenizer matches as one token and
    that decoding without special tokens drops."""
    found = set()
    texts = {}
    for key, ident in vocab.items():  # OpenVINO's vocabulary is keyed by bytes
        if isinstance(key, bytes):
            try:
                key = key.decode("utf-8")
            except UnicodeDecodeError:
                continue
        texts[key] = int(ident)
    for text in markup_tokens(texts):
        ident = texts[text]
        if encode(text) == [ident] and decode_plain([ident]) == "":
            found.add(text)
    return frozenset(found)


def folder_chat_template(folder) -> str | None:
    """The chat template a Hugging Face-style folder ships: chat_template.jinja, else tokenizer_config.json."""
    import json
    from pathlib import Path

    folder = Path(folder)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def refuse_unsupported(config: GenerationConfig, backend: str) -> None:
    """Options a backend cannot honour are refused by name, never silently dropped."""
    if config.json_schema is not None:
        from aipc.errors import UsageError

        raise UsageError(
            f"structured output (json_schema) is not supported by the {backend} backend: "
            "use openvino, onnxruntime or llamacpp"
        )


def refuse_options(config: GenerationConfig, backend: str, *, penalties: bool, logit_bias: bool) -> None:
    """Sampling options a runtime has no way to apply are refused by name, with the backends that have them."""
    from aipc.errors import InvalidConfigError

    if not penalties:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(config, name):
                raise InvalidConfigError(
                    f"{name} is not supported by the {backend} backend: use llamacpp, onnxruntime or openvino"
                )
    if not logit_bias and config.logit_bias:
        raise InvalidConfigError(f"logit_bias is not supported by the {backend} backend: use llamacpp or onnxruntime")


def fit_to_context(n_prompt: int, context: int, max_tokens: int) -> int:
    """The answer budget left after the prompt; a prompt that fills the context is an error naming the limit."""
    from aipc.errors import ContextLengthError

    if n_prompt >= context:
        raise ContextLengthError(
            f"the prompt has {n_prompt} tokens; this model's context is {context} tokens",
            limit=context - 1,
            requested=n_prompt,
        )
    return min(max_tokens, context - n_prompt)


_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


def piece_bytes(piece: str | bytes) -> bytes:
    """A vocabulary entry's bytes: SentencePiece's byte tokens ("<0xE2>") as that byte, its word marker as a
    space, anything else as it is (tokenizers that give byte-level BPE pieces already decoded)."""
    raw = piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)
    match = _BYTE_PIECE.fullmatch(raw)
    if match:
        return bytes([int(match.group(1), 16)])
    return raw.replace("\u2581".encode(), b" ")


def _byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, character -> byte (printable bytes stand for themselves, the rest are
    shifted past 255)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def tokenizer_json_bytes(folder) -> Callable[[int], bytes | None] | None:
    """Token id -> its bytes, from a folder's Hugging Face `tokenizer.json` (None when there is none): byte-level
    BPE pieces through GPT-2's alphabet, others as `piece_bytes` reads them."""
    import json
    from pathlib import Path

    path = Path(folder) / "tokenizer.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab = data["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        pieces = {i: entry[0] for i, entry in enumerate(vocab) if isinstance(entry, list) and entry}
    elif isinstance(vocab, dict):
        pieces = {i: p for p, i in vocab.items() if isinstance(i, int)}
    else:
        return None
    added = {t.get("id"): t.get("content") for t in data.get("added_tokens") or [] if isinstance(t, dict)}
    byte_level = "ByteLevel" in json.dumps(data.get("decoder")) or "ByteLevel" in json.dumps(data.get("pre_tokenizer"))
    alphabet = _byte_level_chars() if byte_level else {}

    def lookup(ident: int) -> bytes | None:
        if ident in added and isinstance(added[ident], str):
            return added[ident].encode("utf-8")
        piece = pieces.get(ident)
        if not isinstance(piece, str):
            return None
        if byte_level and all(c in alphabet for c in piece):
            return bytes(alphabet[c] for c in piece)
        return piece_bytes(piece)

    return lookup


ByteLookup = Callable[[int], "bytes | None"]


class TokenBytes:
    """A token's own bytes, for log-probs: its text's, or, for a token that holds part of a UTF-8 character (its
    vocabulary entry is not valid UTF-8, and its text alone is empty, U+FFFD, or only what precedes the part),
    its vocabulary entry's, looked up through `entries()` (built once, on first need; None when the vocabulary
    cannot be read)."""

    def __init__(
        self, detokenize: Callable[[list[int]], str], entries: Callable[[], Callable[[int], bytes | None] | None]
    ):
        self._detokenize = detokenize
        self._entries = entries
        self._lookup: ByteLookup | None = None
        self._looked = False

    def __call__(self, ident: int) -> bytes:
        text = self._detokenize([int(ident)])
        if not self._looked:
            self._lookup, self._looked = self._entries(), True
        raw = self._lookup(int(ident)) if self._lookup is not None else None
        if raw is None:
            return text.encode("utf-8")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw  # part of a character: its text alone is empty, U+FFFD, or only the whole part of it
        return text.encode("utf-8")  # whole characters: the text is the tokenizer's own reading of them

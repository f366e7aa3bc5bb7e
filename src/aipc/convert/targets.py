"""One exporter per target format, each writing a runnable folder from a safe Hugging Face checkpoint."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from aipc.convert.recipes import Recipe
from aipc.convert.tools import run_tool
from aipc.errors import ConversionError, UsageError

LLAMA_CPP_DIR_ENV = "AIPC_LLAMA_CPP_DIR"
# llama.cpp's LLAMA_FTYPE_* values. f32 (ALL_F32) writes a file's weights dequantized: `aipc eval`'s reference.
GGUF_FTYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}


def export_openvino(checkpoint: Path, out: Path, recipe: Recipe, log: Path) -> None:
    """optimum-intel's exporter: a stateful IR with NNCF weight compression, plus OpenVINO tokenizers."""
    o = recipe.options
    argv = [
        sys.executable,
        "-m",
        "optimum.commands.optimum_cli",
        "export",
        "openvino",
        "-m",
        str(checkpoint),
        "--task",
        "text-generation-with-past",
        "--weight-format",
        o["weight_format"],
    ]
    if o["weight_format"] == "int4":
        argv += ["--group-size", str(o["group_size"]), "--ratio", str(o["ratio"])]
        if o.get("sym"):
            argv.append("--sym")
    argv.append(str(out))
    run_tool(f"exporting to OpenVINO {recipe.precision}", argv, log)
    if not (out / "openvino_tokenizer.xml").is_file() or not (out / "openvino_detokenizer.xml").is_file():
        raise ConversionError(
            "the OpenVINO export wrote no tokenizer/detokenizer IR (is openvino-tokenizers installed?)"
        )


def export_onnx(checkpoint: Path, out: Path, recipe: Recipe, log: Path, cache: Path) -> None:
    """ONNX Runtime GenAI's model builder: model.onnx + genai_config.json for the chosen execution provider."""
    o = recipe.options
    argv = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(checkpoint),
        "-o",
        str(out),
        "-p",
        o["precision"],
        "-e",
        o["execution_provider"],
        "-c",
        str(cache),
    ]
    if "block_size" in o:
        argv += ["--extra_options", f"block_size={o['block_size']}"]
    run_tool(f"building ONNX {recipe.precision} for {o['execution_provider']}", argv, log)
    if not (out / "genai_config.json").is_file():
        raise ConversionError("the ONNX Runtime GenAI builder wrote no genai_config.json")


def llama_cpp_dir() -> Path:
    """Where llama.cpp's `convert_hf_to_gguf.py` (with its `gguf-py` and `conversion` packages) lives."""
    explicit = os.environ.get(LLAMA_CPP_DIR_ENV)
    folder = Path(explicit) if explicit else Path(sys.prefix) / "share" / "aipc" / "llama.cpp"
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise UsageError(
            f"GGUF conversion needs llama.cpp's convert_hf_to_gguf.py in {folder}: run `scripts/setup.sh convert` "
            f"(it unpacks it from the llama-cpp-python source package), or set {LLAMA_CPP_DIR_ENV}"
        )
    return folder


def export_gguf(checkpoint: Path, out: Path, recipe: Recipe, log: Path, name: str) -> Path:
    """llama.cpp's converter writes f16 or q8_0; q4_0 and q4_k_m are quantized from f16 by llama.cpp itself."""
    precision = recipe.precision
    tools = llama_cpp_dir()
    direct = precision if precision in ("f16", "q8_0") else "f16"
    first = out / f"{name}-{direct}.gguf"
    argv = [
        sys.executable,
        str(tools / "convert_hf_to_gguf.py"),
        str(checkpoint),
        "--outtype",
        direct,
        "--outfile",
        str(first),
        "--model-name",
        _gguf_model_name(name, checkpoint),
    ]
    run_tool(f"converting to GGUF {direct}", argv, log, env={"PYTHONPATH": str(tools / "gguf-py")})
    if direct == precision:
        return first
    final = out / f"{name}-{precision}.gguf"
    quantize_gguf(first, final, precision, log)
    first.unlink()
    return final


def _gguf_model_name(name: str, checkpoint: Path) -> str:
    """llama.cpp applies Phi-3's SentencePiece token attributes to any model whose *name* says phi3, and then
    needs `<s>`, `</s>` and `<unk>` in the vocabulary; a Phi-3-layout model with another vocabulary (byte-level
    BPE) must not be named so."""
    import json

    tokenizer = checkpoint / "tokenizer.json"
    if tokenizer.is_file():
        vocab = json.loads(tokenizer.read_text()).get("model", {}).get("vocab", {})
        if "</s>" not in vocab:
            for word in ("phi-3", "phi3", "Phi-3", "Phi3"):
                name = name.replace(word, "p3")
    return name


def quantize_gguf(src: Path, dst: Path, precision: str, log: Path) -> None:
    """Requantize a GGUF file with llama.cpp (in a subprocess: a crash in native code must not take aipc down)."""
    code = (
        "import ctypes, sys, llama_cpp\n"
        "p = llama_cpp.llama_model_quantize_default_params()\n"
        f"p.ftype = {GGUF_FTYPES[precision]}\n"
        "p.allow_requantize = True\n"
        "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))\n"
    )
    try:
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            raise ImportError
    except ImportError:
        raise UsageError("GGUF quantization needs llama-cpp-python: pip install 'aipc[llamacpp]'") from None
    run_tool(f"quantizing GGUF to {precision}", [sys.executable, "-c", code, str(src), str(dst)], log)


def copy_tokenizer_files(checkpoint: Path, out: Path) -> None:
    """Keep the source's tokenizer and config beside a GGUF file, for reference tools and `show`."""
    for fname in ("config.json", "generation_config.json", "tokenizer_config.json"):
        if (checkpoint / fname).is_file():
            shutil.copy2(checkpoint / fname, out / fname)

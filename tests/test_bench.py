"""`aipc bench` on the real embedded model, kept tiny: every figure comes from the event stream."""

from __future__ import annotations

import csv
import json

from aipc.bench import runner
from aipc.bench.runner import Config
from tests.conftest import run_cli


def test_runner_measures_from_the_event_stream_per_configuration():
    configs = [Config("smollm2:135m", "openvino", "cpu", "ov"), Config("smollm2:135m", "llamacpp", "cpu", "llama")]
    report = runner.run(configs, [16, 48], gen_tokens=8, repeats=2, warmup=0)
    rows = report["results"]
    assert [(r["config"], r["prompt_length"]) for r in rows] == [("ov", 16), ("llama", 16), ("ov", 48), ("llama", 48)]
    for r in rows:
        assert "error" not in r, r
        assert r["generated_tokens"] == 8  # fixed-length decode, past end-of-turn tokens
        assert abs(r["prompt_tokens"] - r["prompt_length"]) <= 2
        assert r["ttft_ms"] > 0 and r["next_token_ms"] > 0 and r["tokens_per_s"] > 0
        assert r["next_token_ms_min"] <= r["next_token_ms"] <= r["next_token_ms_max"]
        assert 50 < r["peak_rss_mb"] < 4000 and r["model_bytes"] > 50e6
        assert 0 < r["roofline_fraction"] <= 1.5
    assert report["machine"]["memory_bandwidth_gbs"] > 0.5
    assert report["machine"]["cpu"]["cores"] >= 1


def test_bench_cli_writes_table_json_csv_and_chart_and_teaches_auto(tmp_path):
    out = tmp_path / "b"
    home = tmp_path / "home"  # its own store: the record it writes changes what auto picks
    args = ["--prompt-lengths", "16,32", "--gen-tokens", "6", "--repeats", "1", "--warmup", "0"]
    files = ["--json", f"{out}.json", "--csv", f"{out}.csv", "--plot", f"{out}.png"]
    result = run_cli("bench", *args, *files, timeout=600, env={"AIPC_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert "next-token ms" in result.stdout and "memory read bandwidth" in result.stdout
    report = json.loads(out.with_suffix(".json").read_text())
    configs = {r["config"] for r in report["results"]}
    assert configs == {"smollm2:135m openvino q4_1 cpu", "smollm2:135m llamacpp q4_1 cpu"}
    with open(out.with_suffix(".csv")) as fh:
        assert len(list(csv.DictReader(fh))) == 4
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote the chart (next-token latency by input length) to {out}.png" in result.stdout
    assert "auto will choose it" in result.stdout
    fastest = json.loads((home / "bench" / "fastest.json").read_text())["smollm2:135m|cpu"]
    assert fastest["backend"] in ("openvino", "llamacpp") and fastest["tokens_per_s"] > 0


def test_bench_rejects_bad_lengths():
    result = run_cli("bench", "--prompt-lengths", "32,lots")
    assert result.returncode == 2 and "--prompt-lengths takes comma-separated token counts" in result.stderr


def test_each_configuration_measures_its_own_variant(tmp_path):
    """With a stored variant beside the embedded model, the embedded (q4_1) configurations used to name the
    model alone, so their worker opened the stored variant: q4_1 rows with the other variant's size, memory and
    path, and a fastest.json pairing 'q4_1' with that path. Each configuration now names its source."""
    from aipc.store.resolve import resolve

    home = tmp_path / "home"
    env = {"AIPC_HOME": str(home)}
    made = run_cli("convert", "smollm2:135m", "--to", "gguf", "--precision", "q8_0", env=env, timeout=600)
    assert made.returncode == 0, made.stderr
    out = tmp_path / "b.json"
    args = ["--backends", "llamacpp", "--prompt-lengths", "16", "--gen-tokens", "4", "--repeats", "1", "--warmup", "0"]
    result = run_cli("bench", *args, "--json", str(out), env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = {r["config"]: r for r in json.loads(out.read_text())["results"]}
    q41, q80 = rows["smollm2:135m llamacpp q4_1 cpu"], rows["smollm2:135m llamacpp q8_0 cpu"]
    assert q41["model"] == "smollm2:135m@embedded" and q41["path"] == str(resolve(None).path)
    assert q80["model"] == "smollm2:135m@gguf-q8_0" and "gguf-q8_0" in q80["path"]
    assert q80["model_bytes"] > 1.3 * q41["model_bytes"]  # q8_0 weights are bigger than q4_1's
    fastest = json.loads((home / "bench" / "fastest.json").read_text())["smollm2:135m|cpu"]
    row = q41 if fastest["variant"] == "embedded" else q80
    assert fastest["path"] == row["path"] and fastest["config"] == row["config"]
    assert f"wrote the results as JSON to {out}" in result.stdout

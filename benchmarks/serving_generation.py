"""Serving a generator on this machine, in one run: our server (`lifecycle serve` of an onnxruntime-genai bundle:
MLServer with OpenAI's routes), int4 and fp32, against llama-cpp-python's OpenAI-compatible server on the same
model's GGUF and against transformers' `generate` in PyTorch. Every side gets the same chat prompts (a seeded sample
of the shared instruction data, as configs/instructions.yaml reads them), the same max_tokens, greedy decoding and
all the machine's CPU threads, at each concurrency in turn. The servers are called by the official `openai` client,
streaming with usage. Prints one table: time to first token p50/p99, tokens/s per request and in total, the peak
RSS of the serving process, and the share of responses that are PyTorch's word for word.

llama-cpp-python is not among the project's dependencies (it compiles llama.cpp: gcc, g++ and cmake): install it in
a venv of its own and name its python (or set LLAMA_PYTHON); without it that side is left out.

    python -m venv ../llamacpp-venv && ../llamacpp-venv/bin/pip install "llama-cpp-python[server]"
    python benchmarks/serving_generation.py --llama-python ../llamacpp-venv/bin/python --markdown table.md
    python benchmarks/serving_generation.py --dry-run      # 2 prompts, 8 tokens, concurrency 1 and 2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.process_groups import wait_until_answers  # noqa: E402
from pipelines.tracking_server import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTIONS = ROOT / "configs" / "instructions.yaml"
MODEL = "generator-benchmark"  # the name every server answers to
SIDES = ("ours int4", "ours fp32", "llama.cpp", "transformers")
PYTORCH = "transformers"  # the reference of the last column


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32, help="requests per side and concurrency")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,8", help="concurrent clients, comma-separated")
    parser.add_argument("--sides", default=",".join(SIDES), help="a comma-separated subset of " + ", ".join(SIDES))
    parser.add_argument("--llama-python", default=os.environ.get("LLAMA_PYTHON"), help="a python with llama-cpp-python")
    parser.add_argument("--markdown", help="write the table to this file as well")
    parser.add_argument("--dry-run", action="store_true", help="2 prompts, 8 tokens, concurrency 1 and 2 (tests)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # the PyTorch side's process writes its records here
    args = parser.parse_args()
    if args.dry_run:
        args.prompts, args.max_tokens, args.concurrency = 2, 8, "1,2"
    levels = [int(c) for c in args.concurrency.split(",")]
    messages = chat_prompts(args.prompts)
    threads = os.cpu_count()
    if args.worker:
        Path(args.worker).write_text(json.dumps(generate_in_process(messages, levels, args.max_tokens, threads)))
        return
    sides = args.sides.split(",")
    if "llama.cpp" in sides and not args.llama_python:
        print("llama.cpp left out: no --llama-python (or LLAMA_PYTHON) given", file=sys.stderr)
        sides.remove("llama.cpp")
    rows = []
    with tempfile.TemporaryDirectory(prefix="serving-generation-") as tmp:
        for side in sides:
            print(f"  {side} ...", file=sys.stderr, flush=True)
            rows += measure(side, messages, levels, args, Path(tmp))
    table = render(rows, args, threads)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")


def chat_prompts(count: int) -> list[list[dict]]:
    """A seeded sample of the shared instruction data's prompts as chat messages, read as the instruction run reads
    them (its format, columns and system prompt)."""
    import pandas as pd

    from components.config import load_config
    from components.generation.formats import to_examples

    cfg = load_config(INSTRUCTIONS)
    path = ROOT / cfg.data.path
    examples, _ = to_examples(pd.read_json(path), cfg.generation.format, cfg.generation, str(path))
    return [example.turns for example in random.Random(0).sample(examples, count)]


def measure(side: str, messages: list, levels: list[int], args, tmp: Path) -> list[dict]:
    """One side's rows: its process started (and warmed up), then each concurrency in turn, its RSS sampled
    throughout."""
    port, log = free_port(3), tmp / f"{side.replace(' ', '-')}.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(command(side, port, args, tmp), cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    rss = PeakRss(process.pid)
    try:
        if side == PYTORCH:
            if process.wait() != 0:
                raise SystemExit(f"{side} failed:\n{log.read_text()[-3000:]}")
            records = {int(c): r for c, r in json.loads((tmp / "pytorch.json").read_text()).items()}
        else:
            records = served(f"http://127.0.0.1:{port}", process, messages, levels, args.max_tokens, side, log)
    finally:
        rss.stop()
        process.terminate()
        process.wait(timeout=60)
    return [summary(side, c, records[c], rss.peak) for c in levels]


def command(side: str, port: int, args, tmp: Path) -> list[str]:
    """What serves one side on `port` (the PyTorch side: what runs it and writes its records)."""
    threads = str(os.cpu_count())
    if side.startswith("ours"):
        return our_server(export(side.split()[1], tmp), port, tmp / "predictions")
    if side == "llama.cpp":
        from components.model.bundled_llm import _packaged_gguf  # the file bundled-llm is converted from

        serve = [args.llama_python, "-m", "llama_cpp.server", "--model", str(_packaged_gguf())]
        serve += ["--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
        serve += ["--n_threads", threads, "--n_threads_batch", threads]
        return serve + ["--interrupt_requests", "False"]  # by default a new request cuts off the one streaming
    run = [sys.executable, __file__, "--worker", str(tmp / "pytorch.json"), "--prompts", str(args.prompts)]
    return run + ["--max-tokens", str(args.max_tokens), "--concurrency", args.concurrency]


def export(precision: str, tmp: Path) -> Path:
    """The bundled LLM as stage 6 exports a fine-tuned one: onnxruntime-genai's model builder at `precision` (int4 or
    fp32) for the CPU, with the tokenizer and the instruction run's rendering beside it."""
    from components.config import load_config
    from components.deploy.generative_export import build_export
    from components.model.bundled_llm import bundled_llm_folder

    gen = load_config(INSTRUCTIONS).generation
    return build_export(str(bundled_llm_folder()), tmp / f"og-{precision}", precision, gen)


def our_server(bundle: Path, port: int, predictions: Path) -> list[str]:
    """`lifecycle serve` of a generator's bundle without the registry, as benchmarks/shadow.py serves the
    classifier's, with the prediction log on as in production."""
    code = (
        "from components.deploy.server import Limits, serve; "
        f"serve({str(bundle)!r}, {MODEL!r}, '1', {port}, {str(predictions)!r}, Limits())"
    )
    return [sys.executable, "-c", code]


def served(url, process, messages, levels, max_tokens, side, log) -> dict[int, list[dict]]:
    """Each concurrency's records, after two untimed requests (the first compiles and allocates)."""
    from openai import OpenAI

    if not wait_until_answers(f"{url}/v1/models", process):
        raise SystemExit(f"{side} did not answer in 120 s:\n{log.read_text()[-3000:]}")
    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    for turns in messages[:2]:
        streamed(client, turns, max_tokens)
    records = {}
    for clients in levels:
        with ThreadPoolExecutor(clients) as pool:  # each client sends its next request when its last has ended
            records[clients] = list(pool.map(lambda turns: streamed(client, turns, max_tokens), messages))
    return records


def streamed(client, turns: list[dict], max_tokens: int) -> dict:
    """One streamed chat completion, timed at the client: sent, first content, last chunk."""
    start, first, text, tokens = time.perf_counter(), None, [], None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=turns,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
    return {"start": start, "first": first, "end": time.perf_counter(), "tokens": tokens, "text": "".join(text)}


def generate_in_process(messages: list, levels: list[int], max_tokens: int, threads: int) -> dict[int, list[dict]]:
    """The PyTorch side, as a transformers user serves it: `generate` on the fp32 model, one prompt at a time at
    concurrency 1, and static batches of `concurrency` prompts (left-padded) otherwise, each request timed from its
    batch's start. A streamer stamps each decoding step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    from components.model.bundled_llm import bundled_llm_folder

    class Steps(BaseStreamer):
        def __init__(self):
            self.stamps, self.tokens = [], []  # the first put is the prompt

        def put(self, value):
            self.stamps.append(time.perf_counter())
            self.tokens.append(value.reshape(-1).tolist())

        def end(self):
            pass

    torch.set_num_threads(threads)
    folder = bundled_llm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ends = model.generation_config.eos_token_id
    ends = set(ends if isinstance(ends, list) else [ends])
    prompts = [tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) for turns in messages]

    def batch(texts: list[str]) -> list[dict]:
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        steps, start = Steps(), time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, streamer=steps)
        stamps, tokens = steps.stamps[1:], steps.tokens[1:]
        records = []
        for i in range(len(texts)):
            ids = [step[i] for step in tokens]
            n = next((k for k, t in enumerate(ids) if t in ends), len(ids))  # tokens before the end of turn
            end, text = stamps[min(n, len(ids) - 1)], tokenizer.decode(ids[:n], skip_special_tokens=True)
            records.append({"start": start, "first": stamps[0], "end": end, "tokens": n, "text": text})
        return records

    batch(prompts[:1])  # warm-up, as the servers get
    return {c: [r for i in range(0, len(prompts), c) for r in batch(prompts[i : i + c])] for c in levels}


class PeakRss:
    """The largest resident memory of a process and its children, sampled every 50 ms until stopped."""

    def __init__(self, pid: int):
        import psutil

        self.process, self.peak, self.done = psutil.Process(pid), 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        import psutil

        while not self.done.wait(0.05):
            try:
                family = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in family))
            except psutil.Error:  # it has ended (the PyTorch side ends by itself)
                pass

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def summary(side: str, clients: int, records: list[dict], peak_rss: int) -> dict:
    """A row: time to first token from the request's start; tokens/s per request over its decoding (the tokens
    after the first, from the first to the last); total tokens/s over the concurrency's wall time. Tokens are the
    usage the server reports, else the response re-tokenized (llama-cpp-python streams no usage)."""
    for record in records:
        if record["tokens"] is None:
            record["tokens"] = len(tokenizer()(record["text"], add_special_tokens=False)["input_ids"])
    ttft = [r["first"] - r["start"] for r in records if r["first"]]
    decoding = [(r["tokens"] - 1) / (r["end"] - r["first"]) for r in records if r["tokens"] > 1]
    wall = max(r["end"] for r in records) - min(r["start"] for r in records)
    return {
        "side": side,
        "clients": clients,
        "ttft_p50_ms": 1000 * float(np.percentile(ttft, 50)),
        "ttft_p99_ms": 1000 * float(np.percentile(ttft, 99)),
        "request_tokens_per_s": float(np.median(decoding)),
        "total_tokens_per_s": sum(r["tokens"] for r in records) / wall,
        "tokens": sum(r["tokens"] for r in records),
        "peak_rss_mb": peak_rss / 2**20,
        "texts": [r["text"].strip() for r in records],
    }


@functools.cache
def tokenizer():
    from transformers import AutoTokenizer

    from components.model.bundled_llm import bundled_llm_folder

    return AutoTokenizer.from_pretrained(bundled_llm_folder())


def render(rows: list[dict], args, threads: int) -> str:
    """The table as markdown, with a line saying what was run."""
    reference = next((r["texts"] for r in rows if r["side"] == PYTORCH), None)
    lines = [
        f"{args.prompts} prompts, max_tokens {args.max_tokens}, greedy, {threads} CPU threads for every side",
        "",
        "| side | clients | time to first token, p50 | p99 | tokens/s per request | total tokens/s | tokens | "
        "peak RSS | responses equal to PyTorch's |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = f"{np.mean([a == b for a, b in zip(r['texts'], reference)]):.0%}" if reference else "-"
        lines.append(
            f"| {r['side']} | {r['clients']} | {r['ttft_p50_ms']:.0f} ms | {r['ttft_p99_ms']:.0f} ms | "
            f"{r['request_tokens_per_s']:.1f} | {r['total_tokens_per_s']:.1f} | {r['tokens']} | "
            f"{r['peak_rss_mb']:.0f} MB | {same} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Serving benchmark: `scratchlm serve` under concurrent streaming clients, beside the same
server taking one request at a time and beside `transformers serve` on the same weights.

    .venv/bin/python bench/bench_serve.py [--quick] [--clients 1,4,16,64] [--max-tokens N]
                                          [--threads N] [--soak N] [--no-hf] [--markdown PATH]

The model: preset ``small``'s shape (d_model 512, 4 layers, 16 heads, context 256) with
random weights and a chat tokenizer on a BPE of vocab 1,024 trained on the built-in
corpus (the default run's tokenizer recipe), saved once in ``bench/.data/serve/`` and
exported with ``scratchlm export hf`` for `transformers serve`. Random weights answer
nonsense, but at temperature 0 every server computes the same tokens, and the cost of
a token does not depend on what it says.

Each server runs as its own process with ``OMP_NUM_THREADS=--threads``, started the way
a user starts it; the client (``serve_load.py``: httpx + asyncio, one process, no torch)
sends greedy streaming chat requests from N concurrent clients, each client sending
``--rounds`` requests in turn. Per server and N: aggregate completion tokens/s over the
wall time, p50/p99 time to first token and inter-token latency (the gaps between content
chunks). Contenders:

- scratchlm (fp32) and scratchlm --int8: continuous batching, ``--max-batch 64``;
- scratchlm --max-batch 1: the same server handling one request at a time;
- transformers serve (the HF export, ``--continuous-batching`` off and on): needs the
  ``bench`` extra (accelerate, fastapi, uvicorn); ``--no-hf`` skips it.

``--soak N`` then sends N requests with budgets of 8-128 tokens from 16 clients, 10%
cancelled mid-stream, to scratchlm, and reports errors, leaked requests (running at the
end, from /health) and the server's RSS over the run (first vs last quarter).

Run it on an idle machine: the client and the servers share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

try:  # the client the openai package uses (openai >= 3 ships it as httpx2)
    import httpx2 as httpx
except ImportError:
    import httpx
from harness import BENCH, REPO, Report, Table, cores, load_average, num, ratio
from serve_load import LoadResult, run_load

DATA = BENCH / ".data" / "serve"
CHECKPOINT = DATA / "small-chat"
HF_FOLDER = DATA / "small-chat-hf"
PYTHON = sys.executable
SCRATCHLM = [PYTHON, "-m", "scratchlm"]


def build_model() -> None:
    """The benchmark checkpoint and its HF export, built once (a few seconds)."""
    if (CHECKPOINT / "model.safetensors").exists() and (HF_FOLDER / "config.json").exists():
        return
    DATA.mkdir(parents=True, exist_ok=True)
    script = (
        "import sys, torch\n"
        "from scratchlm.builtin import END_OF_TEXT, builtin_corpus\n"
        "from scratchlm.chat_format import chat_tokenizer\n"
        "from scratchlm.checkpoint import save_checkpoint\n"
        "from scratchlm.config import preset\n"
        "from scratchlm.model import TransformerLM\n"
        "from scratchlm.tokenizer import BPETokenizer, train_bpe\n"
        "vocab, merges = train_bpe(builtin_corpus(), 1024, [END_OF_TEXT])\n"
        "tok = chat_tokenizer(BPETokenizer(vocab, merges, [END_OF_TEXT]))\n"
        "torch.manual_seed(0)\n"
        "model = TransformerLM(preset('small', vocab_size=tok.vocab_size))\n"
        "save_checkpoint(model, None, 0, sys.argv[1], tokenizer=tok, force=True)\n"
    )
    subprocess.run([PYTHON, "-c", script, str(CHECKPOINT)], check=True)
    subprocess.run([*SCRATCHLM, "export", "hf", str(CHECKPOINT), str(HF_FOLDER)], check=True)


class Server:
    """One server process on 127.0.0.1:port, its output in a log file."""

    def __init__(self, name: str, argv: list[str], port: int, model: str, threads: int) -> None:
        self.name, self.port, self.model = name, port, model
        self.base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
        self.log = open(DATA / f"{name.replace(' ', '_')}.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=DATA,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log.name}")
            try:
                if httpx.get(self.base + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log.name}")

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def free_port() -> int:
    """A port nothing listens on now (the OS picks it), so no server of another run
    answers in place of the one started here."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def contenders(args: argparse.Namespace) -> list[tuple[str, list[str], str]]:
    """(name, argv, model id) of every server to measure."""
    ours = [*SCRATCHLM, "serve", str(CHECKPOINT), "--device", "cpu", "--model-name", "bench"]
    found = [
        ("scratchlm", [*ours, "--max-batch", "64"], "bench"),
        ("scratchlm int8", [*ours, "--max-batch", "64", "--int8"], "bench"),
        ("scratchlm one at a time", [*ours, "--max-batch", "1"], "bench"),
    ]
    if not args.no_hf:
        hf = [str(Path(PYTHON).parent / "transformers"), "serve", str(HF_FOLDER), "--device", "cpu"]
        found.append(("transformers serve", [*hf, "--no-continuous-batching"], str(HF_FOLDER)))
        found.append(("transformers serve CB", [*hf, "--continuous-batching"], str(HF_FOLDER)))
    return found


def measure(args: argparse.Namespace, name: str, argv: list[str], model: str):
    """Start one server, warm it up, run every client count; its results by count."""
    port = free_port()
    server = Server(name, [*argv, "--port", str(port)], port, model, args.threads)
    results: dict[int, LoadResult | str] = {}
    try:
        server.wait_ready()
        asyncio.run(run_load(server.base + "/v1", model, 1, 1, 8))  # warm-up
        for n in args.clients:
            print(f"  {name}: {n} clients ...", flush=True)
            load = run_load(server.base + "/v1", model, n, args.rounds, args.max_tokens)
            result = asyncio.run(load)
            results[n] = result
            if result.errors:
                print(f"    {len(result.errors)} errors, first: {result.errors[0]}", flush=True)
    except RuntimeError as e:
        print(f"  {name}: {e}", flush=True)
        results = {n: str(e) for n in args.clients}
    finally:
        server.stop()
    return results


def soak(args: argparse.Namespace) -> Table:
    """``args.soak`` requests, mixed budgets, 10% cancelled, against scratchlm."""
    port = free_port()
    _, argv, model = contenders(args)[0]
    server = Server("scratchlm soak", [*argv, "--port", str(port)], port, model, args.threads)
    rss: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample_rss() -> None:
        start = time.perf_counter()
        while not stop.wait(1.0):
            rss.append((time.perf_counter() - start, server.rss_mib()))

    try:
        server.wait_ready()
        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        clients = 16
        result = asyncio.run(
            run_load(
                server.base + "/v1", model, clients, max(1, args.soak // clients),
                [8, 16, 32, 64, 128], cancel_fraction=0.1, seed=7,
            )
        )  # fmt: skip
        time.sleep(1.0)  # let the engine see the last cancellations
        health = httpx.get(server.base + "/health", timeout=10).json()
        stop.set()
        sampler.join()
    finally:
        server.stop()
    quarter = max(1, len(rss) // 4)
    first = sum(r for _, r in rss[:quarter]) / quarter
    last = sum(r for _, r in rss[-quarter:]) / quarter
    running = health.get("running", health.get("engine", {}).get("running"))
    table = Table(
        f"Soak: {len(result.outcomes):,} requests, 16 clients, budgets 8-128, 10% cancelled",
        ["requests", "cancelled", "errors", "running at end", "RSS first quarter MiB",
         "RSS last quarter MiB", "tokens/s"],
    )  # fmt: skip
    table.rows.append([
        f"{len(result.outcomes):,}", f"{sum(o.cancelled for o in result.outcomes):,}",
        f"{len(result.errors)}", str(running), num(first), num(last), num(result.tokens_per_s()),
    ])  # fmt: skip
    if result.errors:
        table.notes.append(f"first error: {result.errors[0]}")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="clients 1,4,16; 32-token answers")
    p.add_argument("--clients", default="1,4,16,64", help="concurrent client counts")
    p.add_argument("--rounds", type=int, default=2, help="requests per client per count")
    p.add_argument("--max-tokens", type=int, default=64, help="answer budget per request")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each server")
    p.add_argument("--soak", type=int, default=0, help="soak requests (0 = no soak)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers serve")
    p.add_argument("--only", default="", help="comma-separated contender names to run")
    p.add_argument("--markdown", type=Path, help="write the tables here as Markdown")
    args = p.parse_args()
    if args.quick:
        args.clients, args.max_tokens = "1,4,16", 32
    args.clients = [int(c) for c in args.clients.split(",")]

    build_model()
    report = Report()
    print(
        f"machine: {platform.processor() or platform.machine()}, {cores()} cores, "
        f"load {load_average()}; server threads {args.threads}",
        flush=True,
    )
    measured: dict[str, dict[int, LoadResult | str]] = {}
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    for name, argv, model in contenders(args):
        if only and name not in only:
            continue
        measured[name] = measure(args, name, argv, model)
        report.show(latency_table(name, measured[name]))
    report.show(summary_table(measured, args))
    if args.soak:
        report.show(soak(args))
    report.finish("Serving benchmark", args.markdown)


def latency_table(name: str, results: dict[int, LoadResult | str]) -> Table:
    table = Table(
        f"{name}: streaming greedy chat requests",
        ["clients", "requests", "errors", "tokens/answer", "tokens/s", "TTFT p50 ms",
         "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms"],
    )  # fmt: skip
    for n, r in results.items():
        if isinstance(r, str):
            table.rows.append([str(n), "-", r, "", "", "", "", "", ""])
            continue
        table.rows.append([
            str(n), str(len(r.outcomes)), str(len(r.errors)), num(r.mean_tokens()),
            num(r.tokens_per_s()), num(1000 * r.ttft(0.5)), num(1000 * r.ttft(0.99)),
            num(1000 * r.itl(0.5)), num(1000 * r.itl(0.99)),
        ])  # fmt: skip
    return table


def summary_table(measured: dict[str, dict[int, LoadResult | str]], args) -> Table:
    """Aggregate tokens/s of every server at every client count, and the ratios the
    issue asks for: continuous batching vs one at a time, scratchlm vs transformers."""
    names = list(measured)
    table = Table("Aggregate tokens/s by concurrent clients", ["server", *map(str, args.clients)])
    for name in names:
        row = [name]
        for n in args.clients:
            r = measured[name].get(n)
            row.append(num(r.tokens_per_s()) if isinstance(r, LoadResult) else "-")
        table.rows.append(row)

    def tps(name: str, n: int) -> float | None:
        r = measured.get(name, {}).get(n)
        return r.tokens_per_s() if isinstance(r, LoadResult) else None

    def p99(name: str, n: int) -> float | None:
        r = measured.get(name, {}).get(n)
        return r.itl(0.99) if isinstance(r, LoadResult) else None

    for n in args.clients:
        ours, single = tps("scratchlm", n), tps("scratchlm one at a time", n)
        if ours and single:
            table.notes.append(
                f"{n} clients: continuous batching / one at a time = {ratio(ours / single)}"
            )
        for hf in ("transformers serve", "transformers serve CB"):
            theirs = tps(hf, n)
            if ours and theirs:
                table.notes.append(
                    f"{n} clients: scratchlm / {hf} tokens/s = {ratio(ours / theirs)}; "
                    f"ITL p99 {num(1000 * p99('scratchlm', n))} vs {num(1000 * p99(hf, n))} ms"
                )
    return table


if __name__ == "__main__":
    main()

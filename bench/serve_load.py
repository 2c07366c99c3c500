"""Load test of `rewardstack serve` on loopback: dynamic batching against one request per scoring call.

C client threads each send R requests back to back (closed loop) to a server process on the embedded
backbone. Request j carries 1, 2 or 4 (prompt, response) items (j mod 3) from hh_rlhf_harmless's test
split, answers alternating chosen/rejected, so lengths are mixed. The same requests run against:
- `batched`:  the server's dynamic batching (--max-wait-ms, --max-batch-tokens as given);
- `unbatched`: the same server with --max-batch-tokens 1, so every request is scored alone;
- `packed`:   dynamic batching with the merged rows packed into rows of --pack-tokens, padding-free;
- `direct`:   RewardModel.score on each request in this process, one after another (no HTTP, no server).
Every answer is checked against `direct`'s rewards (|Δ| ≤ 1e-4); errors and mismatches are counted.

    python bench/serve_load.py [--model-dir runs/demo/run/model] [--clients 8] [--requests 6]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from rewardstack.model import ModelConfig, RewardModel

from common import DATA, head_rows

ITEMS_PER_REQUEST = (1, 2, 4)


def build_requests(count: int) -> list[list[dict]]:
    rows = head_rows(DATA / "hh_rlhf_harmless" / "test.jsonl.gz", 4 * count)
    requests = []
    for j in range(count):
        chunk = rows[4 * j : 4 * j + ITEMS_PER_REQUEST[j % 3]]
        requests.append([{"prompt": r["prompt"], "response": r["chosen"] if i % 2 == 0 else r["rejected"]} for i, r in enumerate(chunk)])
    return requests


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, {}


def start_server(model_dir: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "rewardstack.cli", "serve", "--reward", str(model_dir), "--port", str(port), *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return process, url
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not come up in 120 s")


def load(url: str, requests: list[list[dict]], clients: int, expected: list[np.ndarray]) -> dict:
    """C closed-loop clients; request j goes to client j mod C. Latencies in seconds."""
    latencies, errors, mismatches = [], 0, 0
    lock = threading.Lock()

    def client(c: int) -> None:
        nonlocal errors, mismatches
        for j in range(c, len(requests), clients):
            start = time.perf_counter()
            status, answer = post(url + "/v1/score", {"items": requests[j]})
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if status != 200:
                    errors += 1
                elif np.max(np.abs(np.array(answer["rewards"]) - expected[j])) > 1e-4:
                    mismatches += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    with urllib.request.urlopen(url + "/v1/info") as answer:
        stats = json.loads(answer.read())["stats"]
    return {"wall_s": wall, "latencies": latencies, "errors": errors, "mismatches": mismatches, "batches": stats["batches"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a trained reward model (default: SmolLM2-135M + LoRA with a seeded random head)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=6, help="per client")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--pack-tokens", type=int, default=1024, help="row length of the `packed` mode (batched, rows packed padding-free)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = Path(tmp) / "model"
            model = RewardModel.create(ModelConfig(model="smollm2-135m", max_length=256, lora_r=16))
            torch.manual_seed(0)
            torch.nn.init.normal_(model.head.weight, std=0.05)
            model.save(model_dir)
        model = RewardModel.from_pretrained(model_dir)
        requests = build_requests(args.clients * args.requests)
        responses = sum(len(r) for r in requests)
        start = time.perf_counter()
        expected, direct_latencies = [], []
        for request in requests:
            t = time.perf_counter()
            expected.append(model.score([i["prompt"] for i in request], [i["response"] for i in request]).mean)
            direct_latencies.append(time.perf_counter() - t)
        results = {"direct": {"wall_s": time.perf_counter() - start, "latencies": direct_latencies, "errors": 0, "mismatches": 0, "batches": len(requests)}}
        del model
        batched = ["--max-batch-tokens", str(args.max_batch_tokens), "--max-wait-ms", str(args.max_wait_ms)]
        for name, extra in (("unbatched", ["--max-batch-tokens", "1"]), ("batched", batched),
                            ("packed", batched + ["--pack-tokens", str(args.pack_tokens)])):
            process, url = start_server(model_dir, extra)
            try:
                results[name] = load(url, requests, args.clients, expected)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
    print(f"{args.clients} clients x {args.requests} requests = {len(requests)} requests, {responses} responses "
          f"(1/2/4 items each, hh_rlhf_harmless test), torch threads {torch.get_num_threads()}")
    print(f"{'mode':<10}{'errors':>7}{'wrong':>7}{'batches':>9}{'resp/s':>9}{'p50 s':>8}{'p99 s':>8}{'vs unbatched':>14}")
    base = responses / results["unbatched"]["wall_s"]
    for name, r in results.items():
        throughput = responses / r["wall_s"]
        p50, p99 = np.percentile(r["latencies"], [50, 99])
        print(f"{name:<10}{r['errors']:>7}{r['mismatches']:>7}{r['batches']:>9}{throughput:>9.2f}{p50:>8.2f}{p99:>8.2f}{throughput / base:>13.2f}x")


if __name__ == "__main__":
    main()

"""Load test of the chat server: many clients at once, every request answered, time to first token.

    python -m gpt_scratch.serve_load --run runs/default                    16 clients for 30 s
    python -m gpt_scratch.serve_load --run runs/default --clients 4 --seconds 10

It starts `python -m gpt_scratch serve --run RUN --port 0` as a process of its own (as a user would),
then each client, a thread, asks question after question until the time is up: the run's held-out
questions in turn, each of the next model in turn, one question per conversation, greedy, at most
--max-new-tokens tokens (the page's default). A request still running when the time is up is waited
for, never cut off. For each request it records the time to first token (from sending the request
to the first token event) and whether the answer arrived whole; then it prints how many requests
were answered and the median and 95th percentile of the time to first token.
"""

import argparse
import http.client
import json
import math
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from gpt_scratch.args import OneLineParser, int_range, print_error

FALLBACK_QUESTIONS = ["What is 3 plus 4?", "Reverse the letters.\n\nc a t", "Which is larger, 4 or 5?"]


def chat_events(url: str, body: dict, timeout: float = 60) -> Iterator[dict]:
    """POST body to url's /api/chat and yield its events as they arrive; ValueError with the server's
    one-line error for a 4xx. Closing the iterator early closes the connection (the server then stops)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("POST", "/api/chat", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise ValueError(f"{response.status}: {json.loads(response.read())['error']}")
        for line in response:  # one JSON event per line, read as each arrives
            yield json.loads(line)
    finally:
        connection.close()


def ask(url: str, model: str, question: str, max_new_tokens: int) -> tuple[float | None, bool]:
    """(seconds to the first token or None, answered whole?) of one question to one model."""
    began, first = time.perf_counter(), None
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_new_tokens": max_new_tokens}
    try:
        for event in chat_events(url, body):
            if event["type"] == "token" and first is None:
                first = time.perf_counter() - began
            if event["type"] == "end":
                return first, True
    except (OSError, ValueError):
        pass
    return first, False


def load_test(url: str, models: list[str], questions: list[str], clients: int, seconds: float,
              max_new_tokens: int = 32) -> dict:
    """`clients` threads asking in a loop for `seconds`; the counts and the times to first token."""
    deadline = time.monotonic() + seconds
    results: list[tuple[float | None, bool]] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        asked = number  # each client starts elsewhere in the lists, so that the models are asked at once
        while time.monotonic() < deadline:
            result = ask(url, models[asked % len(models)], questions[asked % len(questions)], max_new_tokens)
            with lock:
                results.append(result)
            asked += clients

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    firsts = sorted(first for first, _ in results if first is not None)
    answered = sum(ok for _, ok in results)
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(results), "answered": answered,
            "failed": len(results) - answered, "answers_per_second": round(answered / elapsed, 2),
            "ttft_median_s": round(statistics.median(firsts), 4) if firsts else None,
            "ttft_p95_s": round(firsts[math.ceil(0.95 * len(firsts)) - 1], 4) if firsts else None}


def held_out_questions(run: Path) -> list[str]:
    """The run's held-out questions (data/sft_test.json), else a few fixed ones."""
    from gpt_scratch.evaluate import load_split
    from gpt_scratch.templates import to_messages

    if not (run / "data" / "sft_test.json").is_file():
        return FALLBACK_QUESTIONS
    return [to_messages(record)[0]["content"] for record in load_split(run / "data", "test")]


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    """`python -m gpt_scratch serve --run RUN --port 0` as its own process, and its address once it listens."""
    server = subprocess.Popen([sys.executable, "-m", "gpt_scratch", "serve", "--run", str(run), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in server.stdout:  # the models load first; then it prints its address
        found = re.search(r"at (http://\S+)", line)
        if found:
            threading.Thread(target=server.stdout.read, daemon=True).start()  # keep its log from filling the pipe
            return server, found.group(1)
    server.wait()
    raise RuntimeError(f"the server did not start (exit {server.returncode}); run `python -m gpt_scratch serve "
                       f"--run {run}` to see why")


def models_of(url: str) -> list[str]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", "/api/models")
        return [model["name"] for model in json.loads(connection.getresponse().read())["models"]]
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m gpt_scratch.serve_load", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/default"),
                        help="the run folder whose models are served (default runs/default)")
    parser.add_argument("--clients", type=int_range(1, 256), default=16, help="clients at once (default 16)")
    parser.add_argument("--seconds", type=int_range(1, 3600), default=30,
                        help="how long the clients keep asking (default 30)")
    parser.add_argument("--max-new-tokens", type=int_range(1, 8192), default=32,
                        help="longest answer in tokens (default 32, as the page)")
    args = parser.parse_args(argv)
    if not args.run.is_dir():
        parser.error(f"--run {args.run}: no such folder; give a run folder (`python -m gpt_scratch run` writes one)")
    server, url = None, None
    try:
        server, url = start_server(args.run)
        models = models_of(url)
        summary = load_test(url, models, held_out_questions(args.run), args.clients, args.seconds,
                            args.max_new_tokens)
    except RuntimeError as err:
        print_error(parser.prog, str(err))
        return 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    print(f"{summary['clients']} clients for {summary['seconds']} s against {len(models)} models "
          f"({', '.join(models)}) of the server at {url}, serving {args.run}:")
    print(f"  {summary['requests']} requests, {summary['answered']} answered, {summary['failed']} failed, "
          f"{summary['answers_per_second']} answers/s")
    print(f"  time to first token: median {summary['ttft_median_s']} s, 95th percentile {summary['ttft_p95_s']} s")
    print(json.dumps(summary))
    return 0 if summary["failed"] == 0 and summary["requests"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

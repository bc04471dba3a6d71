"""The public op: argument checking, backend choice, lazy Triton import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from prefopt.kernels import BACKENDS, LinearLogprobsParams, linear_logprobs, resolve_backend


def _ok():
    return torch.randn(5, 4), torch.randn(11, 4), torch.tensor([0, 3, -100, 10, 2])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda h, w, y: (h[None], w, y), "hidden must be"),
        (lambda h, w, y: (h, w[:, :3], y), "weight must be"),
        (lambda h, w, y: (h, w, y[:4]), "labels must be"),
        (lambda h, w, y: (h, w.double(), y), "weight dtype"),
        (lambda h, w, y: (h, w, y.float()), "labels must be an integer"),
        (lambda h, w, y: (h.long(), w.long(), y), "hidden must be a floating"),
        (lambda h, w, y: (h, w.to("meta"), y), "weight is on meta"),
        (lambda h, w, y: (h, w, torch.tensor([0, 3, -100, 11, 2])), r"labels\[3\] = 11 is outside \[0, 11\)"),
        (lambda h, w, y: (h, w, torch.tensor([0, -1, -100, 1, 2])), r"labels\[1\] = -1"),
    ],
    ids=[
        "hidden-3d",
        "weight-d",
        "labels-n",
        "dtype",
        "labels-float",
        "int-hidden",
        "device",
        "label-high",
        "label-neg",
    ],
)
def test_bad_inputs_name_the_argument(mutate, match: str) -> None:
    h, w, y = mutate(*_ok())
    with pytest.raises(ValueError, match=match):
        linear_logprobs(h, w, y)


def test_bad_bias_and_params() -> None:
    h, w, y = _ok()
    with pytest.raises(ValueError, match="bias must be"):
        linear_logprobs(h, w, y, bias=torch.zeros(10))
    with pytest.raises(ValueError, match="temperature"):
        linear_logprobs(h, w, y, temperature=0.0)
    with pytest.raises(ValueError, match="softcap"):
        linear_logprobs(h, w, y, softcap=-1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_logprobs(h, w, y, chunk_size=0)
    with pytest.raises(ValueError, match="valid backends: auto, reference, chunked, triton"):
        linear_logprobs(h, w, y, backend="cuda")


def test_params_are_frozen() -> None:
    params = LinearLogprobsParams()
    with pytest.raises(AttributeError):
        params.temperature = 2.0  # type: ignore[misc]


def test_auto_is_chunked_on_cpu_and_backends_agree() -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "chunked"
    h, w, y = _ok()
    results = {b: linear_logprobs(h, w, y, backend=b, return_entropy=True) for b in BACKENDS if b != "triton"}
    for logp, entropy in results.values():
        torch.testing.assert_close(logp, results["reference"][0])
        torch.testing.assert_close(entropy, results["reference"][1])
    assert results["auto"][0].dtype == torch.float32 and results["auto"][0][2] == 0.0


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs triton on CPU tensors")
def test_triton_backend_on_cpu_tensors_says_what_to_do() -> None:
    pytest.importorskip("triton")
    h, w, y = _ok()
    with pytest.raises(RuntimeError, match="needs CUDA tensors.*backend='chunked'"):
        linear_logprobs(h, w, y, backend="triton")


def test_import_prefopt_does_not_import_triton() -> None:
    code = "import sys, prefopt, prefopt.kernels; prefopt.kernels.linear_logprobs; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_int32_labels_and_empty_input() -> None:
    h, w, y = _ok()
    torch.testing.assert_close(linear_logprobs(h, w, y.int()), linear_logprobs(h, w, y))
    assert linear_logprobs(h[:0], w, y[:0]).shape == (0,)

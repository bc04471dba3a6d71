"""`prefopt.LossCall` and `prefopt.loss_arguments`: every registered offline loss from a batch, by name.

Each loss run through `LossCall(name, engine=..., reference=...)(batch)` must equal the same loss called by
hand with tensors: paired `chosen()`/`rejected()` with the counts as lengths, unpaired sums with the labels,
ranked `grouped()`; KTO's z₀ scored by hand from `mismatched_indices` and `kto_kl_estimate` on rows built
here (not through `uncollate`); BCO's δ the mean of β·ρ of the calls before and of its own; the engine statistics
(WPO's Σ_t log Σ_v p², TDPO's sequential KL) read off engine outputs made with them; ODPO's `margin` the pairs'
score differences. Models: two random-init
2-layer Llamas (policy seed 0, reference seed 2 with its head scaled ×4: a sharper reference, so that KTO's
z₀ lies well above its clamp at 0), float32 on CPU, so both sides compute the same numbers. Engine outputs
are computed once per batch (`outputs`) to keep the file fast; `LossCall` runs the engine itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import prefopt
from prefopt import LossCall, LossInputError, UnknownLossError, loss_arguments
from prefopt.data.collate import collate_preferences, uncollate
from prefopt.engine import CacheKey, LogProbEngine, ReferenceCache, ReferenceLogProbs
from prefopt.losses.unpaired import BCOState, kto_kl_estimate, mismatched_indices
from prefopt.threads import torch_threads

# Three pairs with distinct prompts (so KTO's mismatched pairs are the shift by one), completions of 1–3 tokens.
PAIRS = [
    {"prompt_ids": [1, 5, 6, 7], "completion_ids": [[8, 9], [10, 11, 12]], "example_index": 0, "margin": 2.0},
    {"prompt_ids": [1, 20], "completion_ids": [[21, 22, 23], [24]], "example_index": 1, "margin": 0.5},
    {"prompt_ids": [1, 30, 31], "completion_ids": [[32], [33, 34]], "example_index": 2, "margin": 1.5},
]
# The unpaired rows `prefopt.data.to_unpaired` makes of PAIRS: pair b → rows 2b (chosen, True), 2b + 1 (rejected).
ROWS = [
    {"prompt_ids": p["prompt_ids"], "completion_ids": [c], "label": k == 0, "example_index": 2 * i + k}
    for i, p in enumerate(PAIRS)
    for k, c in enumerate(p["completion_ids"])
]
RANKED = [
    {"prompt_ids": [1, 40, 41], "completion_ids": [[42, 43], [44], [45, 46, 47]], "example_index": 0},
    {"prompt_ids": [1, 50], "completion_ids": [[51], [52, 53], [54, 55]], "example_index": 1},
]
DATA = {"paired": PAIRS, "unpaired": ROWS, "ranked": RANKED}
OFFLINE = [
    (kind, name)
    for kind in ("paired", "unpaired", "ranked")
    for name in prefopt.list_losses(kind)
    if prefopt.loss_spec(name).scores == "logps"
]


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with torch_threads(1):  # tiny models: extra OpenMP threads only spin on a busy machine
        yield


@pytest.fixture(scope="module")
def models() -> tuple[LogProbEngine, ReferenceLogProbs]:
    reference = tiny_llama(2)
    with torch.no_grad():
        reference.lm_head.weight.mul_(4.0)
    return LogProbEngine(tiny_llama(0)), ReferenceLogProbs.from_model(reference)


@pytest.fixture(scope="module")
def outputs(models) -> dict:
    """(kind, packed) → (batch, policy output, reference output), computed once."""
    engine, reference = models
    table = {}
    for kind in DATA:
        for packed in (False, True):
            batch = batch_of(kind, packed=packed)
            with torch.no_grad():  # with every statistic a loss may take (prefopt.loss_call.ENGINE_INPUTS)
                policy = engine(batch, return_stats=True, kl_reference=reference, score_prompt=kind == "paired")
                table[kind, packed] = batch, policy, reference(batch)
    return table


@pytest.fixture(scope="module")
def kto_kl(models) -> torch.Tensor:
    return kto_reference_point_by_hand(*models, ROWS)


def batch_of(kind: str, *, packed: bool = False):
    return collate_preferences(DATA[kind], pad_token_id=0, packed=packed)


def engine_statistics(name: str, policy) -> dict:
    """The engine-statistic inputs `name` takes, split by kind by hand (paired: chosen()/rejected())."""
    out = {}
    for input_name in prefopt.loss_spec(name).extra_inputs:
        for base in ("log_sum_sq_probs", "seq_kl", "prompt_sum", "prompt_count"):
            if input_name == f"chosen_{base}":
                out[input_name] = policy.chosen(getattr(policy, base))
            elif input_name == f"rejected_{base}":
                out[input_name] = policy.rejected(getattr(policy, base))
    return out


def by_hand(name: str, kind: str, policy, ref, batch, **inputs):
    """The loss called with tensors, every input built here from the engine outputs."""
    loss = prefopt.get_loss(name)
    inputs = {**engine_statistics(name, policy), **inputs}
    if "margin" in loss.spec.extra_inputs and kind == "paired":
        inputs.setdefault("margin", torch.tensor([p["margin"] for p in PAIRS]))
    if kind == "paired":
        lengths = {"chosen_lengths": policy.chosen(policy.count), "rejected_lengths": policy.rejected(policy.count)}
        return loss(policy.chosen(), policy.rejected(), ref.chosen(), ref.rejected(), **lengths, **inputs)
    if kind == "ranked":
        return loss(policy.grouped(), ref.grouped(), lengths=policy.grouped(policy.count), **inputs)
    return loss(policy.sum, ref.sum, batch.extras["labels"], lengths=policy.count, **inputs)


def kto_reference_point_by_hand(engine, reference, rows: list[dict]) -> torch.Tensor:
    """z₀ = max(0, mean_i log π_θ(y_j(i)|x_i) − log π_ref(y_j(i)|x_i)), j(i) from `mismatched_indices`."""
    partner = mismatched_indices([tuple(r["prompt_ids"]) for r in rows]).tolist()
    pairs = [
        {"prompt_ids": r["prompt_ids"], "completion_ids": rows[j]["completion_ids"]} for r, j in zip(rows, partner)
    ]
    batch = collate_preferences(pairs, pad_token_id=0)
    with torch.no_grad():
        return kto_kl_estimate(engine(batch).sum, reference(batch).sum)


def assert_same(out, expected) -> None:
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.per_example, expected.per_example, rtol=1e-6, atol=1e-6)
    assert set(out.metrics) == set(expected.metrics)


@pytest.mark.parametrize(("kind", "name"), OFFLINE, ids=[name for _, name in OFFLINE])
def test_every_offline_loss_equals_the_hand_wired_call(models, outputs, kto_kl, kind: str, name: str) -> None:
    engine, reference = models
    batch, policy, ref = outputs[kind, False]
    inputs = {}
    if name == "kto":
        assert float(kto_kl) > 0.1  # a real reference point, not the clamp at 0
        inputs["kl"] = kto_kl
    spec, state = prefopt.loss_spec(name), None
    if spec.state is not None and spec.state.includes_current:  # BCO: δ of this batch's own rewards
        state = spec.state.init(spec.defaults())
        state.update(state.observe(policy, ref))
        inputs.update(state.inputs())
    out = LossCall(name, engine=engine, reference=reference)(batch)
    assert_same(out, by_hand(name, kind, policy, ref, batch, **inputs))
    args, kwargs = loss_arguments(name, policy, ref, batch, policy=engine, reference=reference, loss_state=state)
    assert_same(prefopt.get_loss(name)(*args, **kwargs), out)


def run(name: str, models, batch, policy, ref):
    """`name` on engine outputs through `loss_arguments` (batch statistics scored under the models)."""
    args, kwargs = loss_arguments(name, policy, ref, batch, policy=models[0], reference=models[1])
    return prefopt.get_loss(name)(*args, **kwargs)


@pytest.mark.parametrize(("kind", "name"), OFFLINE, ids=[name for _, name in OFFLINE])
def test_padded_equals_packed(models, outputs, kind: str, name: str) -> None:
    padded = run(name, models, *outputs[kind, False])
    packed = run(name, models, *outputs[kind, True])
    torch.testing.assert_close(packed.per_example, padded.per_example, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("name", prefopt.list_losses("unpaired"))
def test_a_paired_batch_feeds_an_unpaired_loss_as_the_rows_to_unpaired_makes(models, outputs, name, packed) -> None:
    from_pairs = run(name, models, *outputs["paired", packed])
    from_rows = run(name, models, *outputs["unpaired", packed])
    assert_same(from_pairs, from_rows)
    assert from_pairs.per_example.shape == (6,)


def test_bco_state_includes_each_call_and_round_trips(models, outputs) -> None:
    """Call t uses δ = the mean of β·ρ over the sequences of calls ≤ t (β = 0.5), as TRL's BCOTrainer updates its
    running mean with the batch before the loss: the first call's δ is its own mean reward, not 0. A second
    call on other rows (the pairs read as rows, reversed) takes the mean over all 12 rewards."""
    engine, reference = models
    batch, policy, ref = outputs["unpaired", False]
    step = LossCall("bco", engine=engine, reference=reference, beta=0.5)
    first = step(batch)
    rewards = 0.5 * (policy.sum - ref.sum)  # [6]
    assert abs(float(rewards.mean())) > 0.01  # δ ≠ 0 tells the TRL order from a lagging one
    assert float(first.metrics["delta"]) == pytest.approx(float(rewards.double().mean()), abs=1e-6)
    state = BCOState()
    state.update(rewards)
    assert_same(first, by_hand("bco", "unpaired", policy, ref, batch, state=state, beta=0.5))
    saved = step.state_dict()
    assert saved["count"] == 6 and saved["mean"] == pytest.approx(float(rewards.double().mean()), abs=1e-7)
    other = collate_preferences(ROWS[::-1], pad_token_id=0)
    with torch.no_grad():
        other_rewards = 0.5 * (engine(other).sum - reference(other).sum)
    second = step(other)
    both = torch.cat([rewards, other_rewards]).double().mean()
    assert float(second.metrics["delta"]) == pytest.approx(float(both), abs=1e-6)
    restored = LossCall("bco", engine=engine, reference=reference, beta=0.5)
    restored.load_state_dict(saved)
    assert_same(restored(other), second)
    assert LossCall("dpo", engine=engine, reference=reference).state_dict() == {}


def test_reference_as_log_probs_model_or_cache_gives_the_same_loss(models, outputs, tmp_path) -> None:
    engine, reference = models
    batch, _, ref = outputs["paired", False]
    key = CacheKey(dataset="pairs", tokenization="ids", model="seed-1")
    cache = ReferenceCache.load_or_build(tmp_path / "ref.safetensors", key, reference, lambda: [batch], num_examples=3)
    outs = [
        LossCall("dpo", engine=engine, reference=ref)(batch)
        for source in (ref, reference, ReferenceLogProbs.from_cache(cache))
    ]
    assert_same(outs[1], outs[0])
    assert_same(outs[2], outs[0])
    assert_same(LossCall("dpo", engine=engine)(batch, reference=ref), outs[0])


def test_engine_statistics_are_asked_for_and_their_absence_named(models, outputs, tmp_path) -> None:
    """An output without log Σ_v p² cannot feed wpo (the error names the engine call); TDPO's sequential KL needs
    a reference model, not a cache or log-probs."""
    engine, reference = models
    batch, _, ref = outputs["paired", False]
    with torch.no_grad():
        plain = engine(batch)
    with pytest.raises(LossInputError, match=r"wpo takes chosen_log_sum_sq_probs.*engine\(batch, return_stats=True\)"):
        loss_arguments("wpo", plain, ref, batch)
    with pytest.raises(LossInputError, match=r"tdpo takes the sequential KL .*ReferenceLogProbs.from_model") as err:
        LossCall("tdpo", engine=engine, reference=ref)(batch)  # the reference's log-probs, not its model
    assert "\n" not in str(err.value)


def test_kto_with_a_cache_needs_a_model_or_its_kl(models, outputs, kto_kl, tmp_path) -> None:
    engine, reference = models
    batch, policy, ref = outputs["unpaired", False]
    key = CacheKey(dataset="rows", tokenization="ids", model="seed-1")
    cache = ReferenceCache.load_or_build(tmp_path / "ref.safetensors", key, reference, lambda: [batch], num_examples=6)
    step = LossCall("kto", engine=engine, reference=ReferenceLogProbs.from_cache(cache))
    with pytest.raises(LossInputError, match=r"kto: its input 'kl' is computed .* or pass kl= yourself") as err:
        step(batch)
    assert "\n" not in str(err.value)
    assert_same(step(batch, kl=kto_kl), by_hand("kto", "unpaired", policy, ref, batch, kl=kto_kl))


def test_rollout_losses_take_per_token_log_probs(models, outputs) -> None:
    """GRPO on 2 prompts × 2 samples (sequence k·B + b): the engine's tokens [S, T], the reference's, the mask."""
    engine, reference = models
    batch = batch_of("paired")  # one sequence per row, padded
    rewards = torch.tensor([[1.0, 0.0], [0.5, 2.0], [0.0, 1.0]])  # [B, K]
    out = LossCall("grpo", engine=engine, reference=reference)(batch, rewards=rewards)
    policy = engine(batch, return_tokens=True)
    ref_tokens = reference(batch, return_tokens=True).tokens
    expected = prefopt.get_loss("grpo")(
        policy.tokens, None, batch.completion_mask, rewards=rewards, ref_logps=ref_tokens
    )
    assert_same(out, expected)
    with pytest.raises(LossInputError, match=r"grpo is a rollout loss .* engine\(batch, return_tokens=True\)"):
        loss_arguments("grpo", outputs["paired", False][1], None, batch, rewards=rewards)
    with pytest.raises(LossInputError, match="collate the batch with packed=False"):
        LossCall("grpo", engine=engine, reference=reference)(batch_of("paired", packed=True), rewards=rewards)


def test_uncollate_gives_back_the_rows() -> None:
    for kind in DATA:
        for packed in (False, True):
            assert uncollate(batch_of(kind, packed=packed)) == DATA[kind]


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        (
            "dpo",
            "unpaired",
            r"dpo is a paired loss and takes pairs: .*; this batch holds unpaired rows \(group_size 1\)",
        ),
        ("kto", "ranked", r"kto is an unpaired loss .* this batch holds rankings of 3 completions"),
        ("plackett_luce", "unpaired", r"plackett_luce is a ranked loss .* this batch holds unpaired rows"),
    ],
)
def test_a_batch_of_another_data_kind_is_one_line(models, name: str, kind: str, message: str) -> None:
    engine, reference = models
    with pytest.raises(LossInputError, match=message) as err:
        LossCall(name, engine=engine, reference=reference)(batch_of(kind))
    assert "\n" not in str(err.value)


def test_clear_errors(models, outputs) -> None:
    engine, reference = models
    batch, policy, _ = outputs["paired", False]
    with pytest.raises(LossInputError, match=r"dpo needs reference log-probs: give reference= .* reference-free"):
        LossCall("dpo", engine=engine)(batch)
    with pytest.raises(UnknownLossError, match="Did you mean 'dpo'"):
        LossCall("dpoo", engine=engine)
    with pytest.raises(LossInputError, match="bradley_terry is a reward-model loss"):
        LossCall("bradley_terry", engine=engine)
    with pytest.raises(LossInputError, match="call it with a TokenBatch"):
        LossCall("dpo", engine=engine, reference=reference)({"input_ids": batch.input_ids})
    with pytest.raises(LossInputError, match=r"policy_out is a TokenBatch; pass the engine's output"):
        loss_arguments("dpo", batch, None, batch)
    with pytest.raises(LossInputError, match="kto needs labels"):
        unlabelled = batch_of("unpaired")
        del unlabelled.extras["labels"]
        LossCall("kto", engine=engine, reference=reference)(unlabelled)
    with pytest.raises(
        LossInputError, match=r"ref_out holds 6 sequences in groups of 3 but the batch 6 in groups of 2"
    ):
        loss_arguments("dpo", policy, outputs["ranked", False][2], batch)


def test_kto_messages_point_to_the_entry_point() -> None:
    """kto without kl, and a TokenBatch where a tensor or prompt ids go: one short line naming LossCall."""
    batch = batch_of("unpaired")
    logps = torch.tensor([-3.0, -4.0])
    calls = [
        lambda: prefopt.losses.kto(logps, logps - 1, torch.tensor([True, False])),
        lambda: mismatched_indices(batch),
        lambda: prefopt.losses.kto(batch, batch, batch.extras["labels"]),
    ]
    for call in calls:
        with pytest.raises(LossInputError, match=r"prefopt\.LossCall\('kto'") as err:
            call()
        assert "\n" not in str(err.value) and len(str(err.value)) < 400, str(err.value)

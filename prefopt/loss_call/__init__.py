"""From engine outputs to any registered loss, by name: what a training loop of your own calls.

    step = prefopt.LossCall("kto", engine=policy_engine, reference=reference, beta=0.1)
    out = step(batch)          # the engine on `batch` (with gradient), the reference, every input → LossOutput
    out.loss.backward()

    args, kwargs = prefopt.loss_arguments("kto", policy_out, ref_out, batch, policy=policy_engine, reference=reference)
    out = prefopt.get_loss("kto", beta=0.1)(*args, **kwargs)

The arguments come from the loss's declaration (`LossSpec`: kind, reference, lengths, extra inputs, state,
batch inputs), never from its name, so a loop swaps dpo → kto → plackett_luce by changing the name (and the
data kind for ranked data). S sequences in group-major order, B groups of K (`prefopt.batch`):

    kind      positional inputs                                       lengths (when the loss takes them)
    paired    chosen() [B], rejected() [B] of policy and reference     chosen_lengths, rejected_lengths
    unpaired  sum [S] of policy and reference, labels [S]              lengths [S]
    ranked    grouped() [B, K] of policy and reference, best first     lengths [B, K]
    rollout   tokens [S, T] (engine(batch, return_tokens=True)),       none: completion_mask carries them
              old_logps [S, T] (a keyword input; default the policy's,
              detached), batch.completion_mask [S, T]

Lengths are the engine's token counts. Labels are `batch.extras["labels"]`; a paired batch feeds an unpaired
loss too: pair b is read as row 2b (chosen, desirable) and row 2b + 1 (rejected, undesirable), the rows that
`prefopt.data.to_unpaired` makes of it. A paired batch is also a ranking of K = 2 completions.

Each extra input the loss takes comes from the first of

    1. the keyword inputs of the call (`rewards=`, `kl=`, `old_logps=`, ...; all of them go to the loss)
    2. the loss's running state (`LossSpec.state`, e.g. BCO's δ): its `inputs()`. `LossCall` keeps the state:
       after each call it observes the call's log-probs and updates, so call t reads the state of calls < t
    3. a statistic of the batch (`LossSpec.batch_inputs`, e.g. KTO's reference point z₀ from mismatched pairs):
       the provider gets the batch's rows (`prefopt.data.collate.uncollate`) and scores the rows it builds
       under `policy` and `reference` without gradient; on one process its all-reduce is the identity
    4. `batch.extras` of that name (`margin`, `weight`, ...)
    5. the policy's engine statistics (`ENGINE_INPUTS`): `chosen_log_sum_sq_probs` / `rejected_log_sum_sq_probs`
       (WPO's Σ_t log Σ_v p², from `engine(batch, return_stats=True)`) and `chosen_seq_kl` / `rejected_seq_kl`
       (TDPO's Σ_t KL(π_ref ‖ π_θ), from `engine(batch, kl_reference=reference)`); `LossCall` makes the engine
       call they need, and an output without them is an error naming it

and a rollout loss gets `ref_logps` from the reference's per-token log-probs and `token_entropy` from the
policy's when it takes them. prefopt's training loop (`prefopt.train`) calls `loss_arguments` with what it
serves over the global batch of every process as keyword inputs.
"""

from prefopt.loss_call.arguments import (
    BATCH_EXTRAS,
    ENGINE_INPUTS,
    bind_loss,
    engine_call,
    engine_inputs,
    loss_arguments,
)
from prefopt.loss_call.call import LossCall

__all__ = ["BATCH_EXTRAS", "ENGINE_INPUTS", "LossCall", "bind_loss", "engine_call", "engine_inputs", "loss_arguments"]

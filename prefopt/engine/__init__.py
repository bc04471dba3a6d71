"""The batched log-prob engine: a causal LM + a `TokenBatch` → per-sequence completion log-probs.

engine = LogProbEngine(model)                 # splits body / lm_head, fused kernel on the head
out = engine(batch)                           # SequenceLogProbs: sum [S], count [S], mean [S]
stats = engine(batch, return_stats=True)      # + logit_sum [S], correct [S] (TRL's logits/*, token accuracy)
ref = ReferenceLogProbs.from_disabled_adapter(peft_model)(batch)
"""

from prefopt.engine.cache import CacheKey, ReferenceCache, StaleCacheError, fingerprint, model_identity
from prefopt.engine.engine import LogProbEngine, TokenLogProbs
from prefopt.engine.head import KNOWN_HEADS, LogitTransform, SplitError, split_model
from prefopt.engine.outputs import SequenceLogProbs, sequence_sums
from prefopt.engine.reference import ReferenceLogProbs

__all__ = [
    "CacheKey",
    "KNOWN_HEADS",
    "LogProbEngine",
    "LogitTransform",
    "ReferenceCache",
    "ReferenceLogProbs",
    "SequenceLogProbs",
    "SplitError",
    "StaleCacheError",
    "TokenLogProbs",
    "fingerprint",
    "model_identity",
    "sequence_sums",
    "split_model",
]

"""The loss zoo: pure functions of per-sequence log-prob tensors, each registered with its contract.

One module per family, each loss a body (its formula) declared with its data kind's helper from
`prefopt.losses.kinds`; importing this package registers every loss. Call them directly
(`prefopt.losses.dpo(...)`) or through the registry (`prefopt.get_loss("dpo", beta=0.1)`).
The table of all losses with formulas and papers is docs/losses.md (generated from the registry).
"""

from prefopt.losses.base import LossOutput, log1mexp
from prefopt.losses.best_of_n import *  # noqa: F403
from prefopt.losses.combine import combine_losses
from prefopt.losses.combined import CombinedLoss, CombinedSpec
from prefopt.losses.ilql import *  # noqa: F403
from prefopt.losses.nlpo import *  # noqa: F403
from prefopt.losses.pairwise import *  # noqa: F403
from prefopt.losses.pairwise_anchored import *  # noqa: F403
from prefopt.losses.pairwise_divergence import *  # noqa: F403
from prefopt.losses.pairwise_margin import *  # noqa: F403
from prefopt.losses.pairwise_regression import *  # noqa: F403
from prefopt.losses.pairwise_regularized import *  # noqa: F403
from prefopt.losses.policy_gradient import *  # noqa: F403
from prefopt.losses.policy_ratio import *  # noqa: F403
from prefopt.losses.policy_reinforce import *  # noqa: F403
from prefopt.losses.ranked import *  # noqa: F403
from prefopt.losses.reference_free import *  # noqa: F403
from prefopt.losses.reward_model import *  # noqa: F403
from prefopt.losses.unpaired import *  # noqa: F403

__all__ = ["CombinedLoss", "CombinedSpec", "LossOutput", "combine_losses", "log1mexp"]

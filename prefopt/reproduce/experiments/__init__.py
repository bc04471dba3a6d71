"""The reproductions, one module each (`prefopt.reproduce.REPRODUCTIONS` lists them in order):

    ipo_bandits              IPO's illustrative bandits: DPO becomes deterministic whatever τ, IPO does not
    dpo_optimum              DPO's closed-form optimum π_ref·exp(r/β)/Z with enough Bradley–Terry data
    best_of_n_kl             best-of-N: the exact KL against log N − (N−1)/N and Beirami et al.'s estimate
    kto_contradictory        KTO on contradictory preferences, against DPO
    single_pair              one deterministic pair: which losses hold the margin at a finite value
    likelihood_displacement  DPO lowers the chosen log-probability; DPOP's penalty keeps it
    length_exploitation      on length-biased preferences DPO's samples grow; R-DPO's and SimPO's less?
    dpo_frontier             DPO's reward–KL frontier against PPO's and best-of-N's (Rafailov et al. 2023, Fig. 2)
    overoptimization         reward-model overoptimisation under best-of-N (Gao, Schulman & Hilton 2022)

Each defines CONFIG, QUICK, PAPER, run(config, progress) and REPRODUCTION (`prefopt.reproduce.base`).
"""

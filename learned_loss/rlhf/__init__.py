"""RLHF baselines: preference data from a policy's samples, the reward model, DPO and
on-policy PPO / RLOO / GRPO steps, rollouts, the pipeline that runs them in stages,
and reward-model over-optimization."""

"""Training stages (installed as `rlaif.training`): reward model, DPO, PPO and SFT, thin over TRL, transformers
and accelerate; their data, shared trainer arguments, checkpoints and processes, and `stages`, which runs one.

Layer: above the judges (the reward model's inputs, PPO's reward) and the base modules; below the flows.
"""

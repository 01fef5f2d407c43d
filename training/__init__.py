"""Training stages: reward model, DPO, PPO and SFT, thin over TRL, transformers and accelerate."""

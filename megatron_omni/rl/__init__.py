"""Phase-6 reinforcement learning: rollouts from the policy in its training layout (rollout.py)
and GRPO (docs/grpo.md)."""

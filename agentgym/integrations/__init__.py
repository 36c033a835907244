"""agentgym environments in other trainers and tools.

- ``agentgym.integrations.openenv_server``: any registered env as an OpenEnv server
  (``agentgym serve ENV_ID``; extra ``serve``, plus ``openenv-core`` installed without its deps).
- ``agentgym.integrations.openenv_client``: ``agentgym/Remote-v0``, a remote env reached by URL,
  for agentgym's own rollout.
- ``agentgym.integrations.trl``: ``grpo_kwargs(env_id, ...)`` for TRL's ``GRPOTrainer``.
- ``agentgym.integrations.verifiers``: an agentgym env as a verifiers 0.4 taskset + env.
- ``agentgym.integrations.trackers``: ``train.log_with`` (TensorBoard, wandb, trackio) through
  accelerate's tracker API.

Each module imports its own optional dependency when it is used, never at ``import agentgym``.
"""

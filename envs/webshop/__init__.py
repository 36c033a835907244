"""WebShop (Yao et al., 2022) re-implemented from its specification: a text shop over real Amazon
products, BM25 search, synthetic and human goals, and the official purchase reward.

``score_purchase`` is importable without loading a shop; the environment itself is
``gymnasium.make("agentgym/WebShop-v0", data_dir=...)`` (``agentgym.envs.webshop.env.WebShopEnv``).
"""

from .reward import PurchaseScore, normalize_colour, score_purchase

__all__ = ["score_purchase", "PurchaseScore", "normalize_colour"]

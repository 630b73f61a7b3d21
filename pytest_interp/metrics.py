"""Metrics: per-example behaviour scores (``pi.metrics.loss()``, ``logprob``, ``logit_diff``, ``kl``, ``cosine``, ...)."""

from .core.metrics import Metric, accuracy, cosine, kl, logit_diff, logprob, loss

__all__ = ["Metric", "accuracy", "cosine", "kl", "logit_diff", "logprob", "loss"]

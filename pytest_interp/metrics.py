"""Metrics: per-example behaviour scores (``pi.metrics.loss()``, ``logprob``, ``logit_diff``, ``kl``, ...)."""

from .core.metrics import Metric, accuracy, kl, logit_diff, logprob, loss

__all__ = ["Metric", "accuracy", "kl", "logit_diff", "logprob", "loss"]

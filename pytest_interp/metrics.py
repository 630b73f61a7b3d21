"""Metrics: per-example behaviour scores (``pi.metrics.loss()``, ``logprob``, ``logit_diff``, ``kl``, ``cosine``, ...)."""

from .core.decoding import generated, generates
from .core.metrics import (Metric, accuracy, cosine, kl, label_diff, label_logprob, logit_diff, logprob, loss,
                           masked_logprob)

__all__ = ["Metric", "accuracy", "cosine", "generated", "generates", "kl", "label_diff", "label_logprob",
           "logit_diff", "logprob", "loss", "masked_logprob"]

"""Attribution methods over input tokens; score them against interventions with ``pi.faithfulness``."""

from .experiments.explain import (Attribution, attention, attention_weights, grad_x_input, integrated_gradients,
                                  leave_one_token_out, rollout)

__all__ = ["Attribution", "attention", "attention_weights", "grad_x_input", "integrated_gradients",
           "leave_one_token_out", "rollout"]

"""Attribution methods over input tokens; score them against interventions with ``pi.faithfulness``."""

from ._explain import (Attribution, attention, grad_x_input, integrated_gradients, leave_one_token_out,
                       rollout)

__all__ = ["Attribution", "attention", "grad_x_input", "integrated_gradients", "leave_one_token_out", "rollout"]

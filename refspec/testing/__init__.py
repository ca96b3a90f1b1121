"""refspec.testing: check another backend or engine against refspec's spec.

- `assert_bits_equal`, `first_difference`, `ulp_distance` (refspec.testing.bits): exact comparison that says
  where and by how much two arrays differ.
- `check_backend(factory)` (refspec.testing.conformance): every op of the backend protocol
  (refspec/protocol.py) on edge-case inputs, the fused ops forward.py calls (protocol.FUSED) against
  FusedFromParts' compositions, qwen35's ops where the backend has them (protocol.QWEN35), then tiny models of
  llama, qwen2, qwen3 (and qwen35) through refspec/forward.py (every tap and the logits); `refspec check-backend
  MODULE:FACTORY` on the command line.
- `REFERENCE_OPS`: the spec's function for each op, the definition a backend reproduces.
- refspec.testing.strategies: hypothesis strategies for the ops' inputs (needs hypothesis).
- refspec.testing.pytest_plugin: a `refspec_check_backend` fixture for another project's tests.
"""
from refspec import spec
from refspec.testing.bits import assert_bits_equal, first_difference, ulp_distance
from refspec.testing.conformance import Check, check_backend

REFERENCE_OPS = {
    "embed": spec.embed, "rmsnorm": spec.rmsnorm, "quantize_q8": spec.quantize_q8_0, "q8_gemv": spec.q8_gemv,
    "add": spec.add, "silu_mul": spec.silu_mul, "rope": spec.rope, "attention": spec.attention,
    "argmax_rows": spec.argmax_rows, "lane_sum": spec.lane_sum, "chunked_sum": spec.chunked_sum, "exp": spec.exp,
    # qwen35 (the recurrent ones on one state, spec.ring_slots says where a backend's ring keeps it)
    "silu": spec.silu, "sigmoid_gate": spec.sigmoid_gate, "l2norm": spec.l2norm, "gated_rmsnorm": spec.gated_rmsnorm,
    "deltanet_gates": spec.deltanet_gates, "conv1d_causal": spec.conv1d_causal, "delta_rule": spec.delta_rule,
}

__all__ = ["assert_bits_equal", "first_difference", "ulp_distance", "check_backend", "Check", "REFERENCE_OPS"]

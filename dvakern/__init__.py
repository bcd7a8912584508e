"""dvakern: the hot ops of dva as torch custom ops, each with a plain-PyTorch reference.

Call ops through the functions below; they dispatch on the one backend switch
(`set_backend('ref' | 'triton' | 'auto')`, env DVA_BACKEND). `dvakern.info()` says which
backends and compiled extensions are active.
"""
from ._backend import BACKENDS, backend, get_backend, set_backend  # noqa: F401
from ._ext import info  # noqa: F401
from .conv_block import gn_silu_conv3x3, gn_silu_conv3x3_ref, pack_conv_weight  # noqa: F401
from .frame_attn import frame_attention, frame_attn_ref  # noqa: F401
from .gn_silu import gn_mod_silu, gn_mod_silu_ref  # noqa: F401
from .ring_decode import ring_decode_attention, ring_decode_attn_ref  # noqa: F401
from .rope import apply_rope_ref, rope_cos_sin  # noqa: F401
from .sampler import flow_sample, flow_step, flow_step_ref  # noqa: F401

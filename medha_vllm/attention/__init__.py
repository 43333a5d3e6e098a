"""Medha's attention backend inside vLLM (CPU), and the policy that picks the kernel.

``backend.MedhaCPUAttentionBackend`` is installed in place of vLLM's
``CPU_ATTN`` through vLLM's own door, ``register_backend`` (patch
``patches/attention_backend.py``): the CPU platform always returns
CPU_ATTN's path, which honours the override. It is CPU_ATTN unchanged
unless ``--scheduler medha`` is on and ``selection`` picks the native
KV-split kernel (``--medha-attention-backend {auto,medha,vllm}``).
"""

BACKEND_PATH = "medha_vllm.attention.backend.MedhaCPUAttentionBackend"

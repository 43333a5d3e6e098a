"""KV-cache parallelism (KVP), pure parts: how one request's KV cache is
sharded by token range across worker groups (shards.py), each group's blocks
(blocks.py) and the rank grid of TP x PP x KVP workers (ranks.py).

Nothing here imports vllm or torch. NOTE(medha): not wired into the engine
yet (issue 10); the executor, worker and attention-merge parts build on it.
"""

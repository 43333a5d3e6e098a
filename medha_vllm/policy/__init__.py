"""Medha policy: slack, deadlines, ordering, chunk search, runtime predictor.

Pure Python (no vllm or torch import): unit-testable with fakes and usable by a
simulator. The vLLM scheduler subclass in medha_vllm/scheduler.py is the
mechanism that consumes these objects.
"""

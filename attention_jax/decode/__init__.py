"""Decoding written once for every model: greedy, sampling and beam search over a step function."""
from attention_jax.decode.beam import beam_search, repeat_for_beams
from attention_jax.decode.sampling import greedy, sample

__all__ = ["beam_search", "greedy", "repeat_for_beams", "sample"]

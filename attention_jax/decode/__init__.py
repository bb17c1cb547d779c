"""Decoding written once for every model: greedy, sampling and beam search over a step
function; CTC best path and joint CTC/attention beam search in `ctc`."""
from attention_jax.decode import ctc
from attention_jax.decode.beam import beam_search, repeat_for_beams
from attention_jax.decode.ctc import joint_beam_search
from attention_jax.decode.sampling import greedy, sample

__all__ = ["beam_search", "ctc", "greedy", "joint_beam_search", "repeat_for_beams", "sample"]

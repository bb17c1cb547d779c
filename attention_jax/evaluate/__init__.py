"""Evaluation metrics in plain Python / NumPy: edit distance, G2P word and phoneme error rates."""
from attention_jax.evaluate.levenshtein import edit_distance
from attention_jax.evaluate.g2p import (closest_reference, g2p_scores, group_references,
                                         phoneme_error_rate, strip_stress, word_error_rate)

"""BLEU with ragged references equals sacrebleu on the same references written out."""
import pytest
import sacrebleu

from attention_jax.evaluate.translation import bleu


def test_ragged_references_match_explicit_streams():
  predictions = ["the cat sat on the mat", "a dog barks loudly", "hello world"]
  references = [["the cat sat on a mat", "a cat sat on the mat"], ["the dog barks loudly"],
                ["hello world"]]
  explicit = sacrebleu.corpus_bleu(predictions, [
      ["the cat sat on a mat", "the dog barks loudly", "hello world"],
      ["a cat sat on the mat", "the dog barks loudly", "hello world"]]).score
  assert bleu(predictions, references) == pytest.approx(explicit)
  assert bleu(["a b c d e"], [["a b c d e"]]) == pytest.approx(100.0)


def test_mismatched_lengths_are_an_error():
  with pytest.raises(ValueError, match="2 predictions need as many non-empty reference lists"):
    bleu(["a", "b"], [["a"]])

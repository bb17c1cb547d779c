r"""WER against word length, no attention vs attention: Bahdanau et al. 2015 Figure 2's question
(does attention hold up on long inputs?) asked of CMUdict G2P.

The trials are g2p_attention's, trained with `test=True`, so each writes every test word's
prediction to `predictions_test.jsonl`; this file's `__main__` turns a sweep of them into
a plot and a table of WER by word length (letters), mean over seeds.

    python -m launch.sweep --config=experiments/g2p_length.py --root=runs/g2p_length --seeds=3
    python experiments/g2p_length.py --root=runs/g2p_length      # -> <root>/report/wer_by_length.*

Arguments (after the colon): as experiments/g2p_attention.py.
"""
import os
import sys

from attention_jax import experiment
from launch import by_length

_G2P = experiment.load(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "g2p_attention.py"))
DEFAULTS = dict(_G2P.DEFAULTS, test=True)
BUCKETS = ((1, 4), (5, 5), (6, 6), (7, 7), (8, 8), (9, 9), (10, 10), (11, 12), (13, 40))


def get_config(arg=None):
  args = experiment.parse_arg(arg, DEFAULTS)
  return _G2P.get_config(",".join(f"{k}={v}" for k, v in args.items()))


def sweep(add):
  """No attention vs Bahdanau (additive) vs Luong (general)."""
  add(attention="none")
  add(attention="bahdanau", score="additive")
  add(attention="luong", score="general")


def _wer(examples: list[dict]) -> float:
  return sum(not e["correct"] for e in examples) / len(examples)


def wer_by_length(predictions_path: str) -> dict[tuple[int, int], tuple[float, int]]:
  """Bucket (first, last letters) -> (word error rate, words) from a predictions file."""
  return by_length.bucket_scores(predictions_path, BUCKETS, len, _wer)


def main(argv=None) -> int:
  return by_length.main(argv, description="WER by word length from a g2p_length sweep.",
                        buckets=BUCKETS, length=len, score=_wer, name="wer_by_length",
                        xlabel="word length (letters)", ylabel="test WER (%)", percent=True)


if __name__ == "__main__":
  sys.exit(main())

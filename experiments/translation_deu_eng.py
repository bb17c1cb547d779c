r"""German -> English FreeDict example phrases with an RNN encoder-decoder: no attention vs
Bahdanau additive vs Luong dot and general attention. BLEU (sacrebleu) on dev selects the
best step; that step is scored on test, and BLEU by source length comes from
`predictions_test.jsonl`. A small corpus (33k pairs): trends only.

Needs the FreeDict file: `apt-get install dict-freedict-deu-eng`, then
    python -m attention_jax.data.prepare freedict_deu_eng --manual_dir /usr/share/dictd
    python -m attention_jax.main --config=experiments/translation_deu_eng.py:attention=bahdanau,score=additive \
        --workdir=runs/deu_eng

BLEU by source length (words), from a sweep's trials:
    python -m launch.sweep --config=experiments/translation_deu_eng.py --root=runs/deu_eng_sweep
    python experiments/translation_deu_eng.py --root=runs/deu_eng_sweep   # -> <root>/report/bleu_by_length.*

Arguments (after the colon): attention, score, steps, smoke.
"""
import sys

from attention_jax import experiment
from attention_jax.evaluate import translation
from launch import by_length

DEFAULTS = dict(attention="luong", score="general", steps=4000, smoke=False)


def get_config(arg=None):
  args = experiment.parse_arg(arg, DEFAULTS)
  c = experiment.base_config()
  # SentencePiece (4,000 pieces a side, trained on train) instead of characters: phrases are
  # 5-15 pieces instead of 20-120 characters, 4x fewer RNN steps.
  c.data.update(name="freedict_deu_eng", manual_dir="/usr/share/dictd",
                tokenizer="sentencepiece", vocab_size=4000)
  c.model.update(dict(
      attention=args["attention"], score=args["score"], cell="lstm", bidirectional=True,
      src_embed_dim=128, tgt_embed_dim=128, hidden_dim=256, dropout_rate=0.2, max_len=128))
  c.optim.learning_rate = 2e-3
  c.train.steps = args["steps"]
  c.evals.dev.update(every=1000, examples=0, metrics="sequence_accuracy,bleu")
  c.evals.test = experiment.test_evaluator(c.evals.dev)
  if args["smoke"]:
    experiment.apply_smoke(c)
  return c


def sweep(add):
  """No attention vs the three scores of Luong et al. 2015 (additive = Bahdanau's)."""
  add(attention="none")
  add(attention="bahdanau", score="additive")
  add(attention="luong", score="dot")
  add(attention="luong", score="general")


# Source words; the test split's 1,822 phrases fall 144 / 684 / 352 / 352 / 184 / 106 into them.
BUCKETS = ((1, 2), (3, 3), (4, 4), (5, 6), (7, 9), (10, 200))


def _bleu(examples: list[dict]) -> float:
  return translation.bleu([e["prediction"] for e in examples], [e["references"] for e in examples])


def _words(source: str) -> int:
  return len(source.split())


def main(argv=None) -> int:
  return by_length.main(argv, description="Test BLEU by source length from a translation sweep.",
                        buckets=BUCKETS, length=_words, score=_bleu, name="bleu_by_length",
                        xlabel="source length (words)", ylabel="test BLEU", percent=False)


if __name__ == "__main__":
  sys.exit(main())

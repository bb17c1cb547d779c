r"""A character-level language model: the decoder-only Transformer on English fortunes.

The corpus is Debian's `fortunes` files (`apt-get install fortunes`: about 15,000 quips,
quotations and poems, 2.5 MB of English), split by fortune (data set `fortunes`,
attention_jax/data/fortunes.py). On a machine with a network, TFDS's `tiny_shakespeare`
works too: build it with TFDS, then `--config.data.name=tiny_shakespeare
--config.data.tokenizer=chars`. Dev bits per character pick the best step; every evaluation
prints sampled continuations of dev windows and draws each layer's and head's causal
self-attention.

    python -m attention_jax.main --config=experiments/lm_chars.py --workdir=runs/lm_chars
    python -m attention_jax.main --config=experiments/lm_chars.py:heads=8,layers=2 --workdir=runs/lm_h8
    python -m attention_jax.main --config=experiments/lm_chars.py:smoke=True --workdir=/tmp/lm_smoke
    python -m launch.sweep --config=experiments/lm_chars.py --root=runs/lm_sweep

Arguments (after the colon): heads, layers, d_model, positions, seq_len, dropout, steps,
test (score the best dev step on the test split at the end), smoke.
"""
from attention_jax import experiment

DEFAULTS = dict(heads=4, layers=4, d_model=128, positions="sinusoidal", seq_len=128,
                dropout=0.1, steps=2000, test=False, smoke=False)


def get_config(arg=None):
  args = experiment.parse_arg(arg, DEFAULTS)
  c = experiment.base_config()
  c.data.update(name="fortunes", manual_dir="/usr/share/games/fortunes", batch_size=32,
                eval_batch_size=64)
  c.task.update(name="lm", seq_len=args["seq_len"])
  c.model.update(dict(
      name="lm", d_model=args["d_model"], num_heads=args["heads"], d_ff=4 * args["d_model"],
      num_layers=args["layers"], dropout_rate=args["dropout"], positions=args["positions"],
      max_len=args["seq_len"], tie_output=True,
      implementation="reference"))  # attention backend: see attention/core.py
  c.optim.update(learning_rate=1e-3, warmup_steps=200, schedule="cosine", weight_decay=0.01)
  c.train.update(steps=args["steps"], select_by="bits_per_char")
  # The whole dev split (about 1,000 windows of 128 characters) for the loss; two sampled
  # continuations of 96 characters after a 32-character prompt, at temperature 0.8.
  c.evals.dev = experiment.evaluator(every=500, examples=0, decode="sample", metrics="",
                                     prompt_len=32, max_len=96, temperature=0.8, show=2,
                                     heatmaps=1)
  if args["test"]:
    c.evals.test = experiment.test_evaluator(c.evals.dev)
  if args["smoke"]:
    experiment.apply_smoke(c)
    c.task.seq_len = c.model.max_len = 32
    for ev in c.evals.values():
      ev.update(prompt_len=8, max_len=16)
  return c


def sweep(add):
  """Heads at a fixed model size, depth, and learned vs sinusoidal positions."""
  for heads in (1, 2, 4, 8):
    add(heads=heads)
  for layers in (1, 2, 6):
    add(layers=layers)
  add(positions="learned")

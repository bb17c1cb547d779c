"""Data sets (offline TFDS builders), vocabularies and grain input pipelines.

The trainer's entry points:

  dataset = get_dataset("cmudict_g2p/stress", data_dir=config.data.data_dir)
  train_iter = iter(make_pipeline(dataset, "train", batch_size=128, seed=config.seed))
  batch = next(train_iter)            # dict of NumPy arrays, see pipeline.py
  state = train_iter.get_state()      # save with the checkpoint; set_state(state) resumes

`DATASETS` lists the names; an unknown one raises `DataError` listing them.
"""
from attention_jax.data.errors import DamagedDataError, DataError, DataFormatError, MissingDataError
from attention_jax.data.paths import DATA_DIR_ENV, resolve_data_dir
from attention_jax.data.pipeline import default_buckets, make_pipeline, steps_per_epoch
from attention_jax.data.lm_pipeline import make_lm_pipeline, num_windows, stream_length
from attention_jax.data.registry import DATASETS, Dataset, from_config, get_dataset, parse_name
from attention_jax.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID, SentencePieceVocabulary, SymbolVocabulary

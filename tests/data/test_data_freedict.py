"""freedict_deu_eng: TEI and dictd parsing, the split by German phrase, SentencePiece, bad input."""
import gzip
import os

import pytest

from attention_jax import experiment
from attention_jax.data import freedict, registry
from attention_jax.data.errors import DataFormatError, MissingDataError
from attention_jax.data.vocab import SentencePieceVocabulary

# One xdist worker runs the whole module: its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("test_data_freedict")

TEI_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<TEI xmlns="http://www.tei-c.org/ns/1.0">
 <teiHeader><fileDesc><titleStmt><title>German-English test dictionary</title></titleStmt></fileDesc></teiHeader>
 <text><body>
"""
TEI_TAIL = " </body></text>\n</TEI>\n"


def _entry(i: int) -> str:
  # Two examples per entry; the second has two translations (joined with ", ").
  return f"""  <entry xml:id="e{i}">
   <form><orth>Haus{i}</orth></form>
   <sense>
    <cit type="trans"><quote>house {i}</quote></cit>
    <cit type="example"><quote>Das ist Haus Nummer {i}.</quote>
     <cit type="trans"><quote>This is house number {i}.</quote></cit></cit>
    <cit type="example"><quote>Sie wohnt im Haus {i}</quote>
     <cit type="trans"><quote>she lives in house {i}</quote></cit>
     <cit type="trans"><quote>she lives at house {i}</quote></cit></cit>
   </sense>
  </entry>
"""


def _write_tei(directory, n_entries=100, extra=""):
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "deu-eng.tei")
  body = "".join(_entry(i) for i in range(n_entries)) + _entry(0) + extra  # entry 0 twice
  with open(path, "w", encoding="utf-8") as f:
    f.write(TEI_HEAD + body + TEI_TAIL)
  return path


@pytest.fixture(scope="module")
def freedict_dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("freedict")
  manual = _write_tei(str(root / "manual"))
  return registry.get_dataset("freedict_deu_eng", data_dir=str(root / "data"),
                              manual_dir=os.path.dirname(manual)), root


def test_parse_tei_pairs(tmp_path):
  pairs = freedict.parse_tei(_write_tei(str(tmp_path), n_entries=2))
  assert pairs == [
      ("Das ist Haus Nummer 0.", "This is house number 0."),
      ("Sie wohnt im Haus 0", "she lives in house 0, she lives at house 0"),
      ("Das ist Haus Nummer 1.", "This is house number 1."),
      ("Sie wohnt im Haus 1", "she lives in house 1, she lives at house 1"),
      ("Das ist Haus Nummer 0.", "This is house number 0."),
      ("Sie wohnt im Haus 0", "she lives in house 0, she lives at house 0"),
  ]


def test_builder_on_generated_tei(freedict_dataset):
  dataset, _ = freedict_dataset
  meta = dataset.metadata
  # 100 entries x 2 examples, entry 0 repeated: 202 pairs, 200 unique, 200 German phrases.
  assert meta["pairs_in_file"] == 202 and meta["unique_pairs"] == 200
  assert meta["phrases"] == {"test": 10, "dev": 10, "train": 180}
  assert dataset.splits == {"train": 180, "dev": 10, "test": 10}
  sides = {s: {r["inputs"] for r in dataset.texts(s)} for s in dataset.splits}
  assert not sides["train"] & sides["dev"] and not sides["train"] & sides["test"]
  assert not sides["dev"] & sides["test"]
  for r in dataset.texts("test"):
    n = r["inputs"].split()[-1].rstrip(".")
    expected = (f"This is house number {n}." if r["inputs"].startswith("Das")
                else f"she lives in house {n}, she lives at house {n}")
    assert r["targets"] == expected and r["references"] == [expected]
  # German umlauts etc. survive: the vocabularies are characters of the train split.
  for r in dataset.texts("dev"):
    assert dataset.input_vocab.decode(dataset.input_vocab.encode(r["inputs"])) == r["inputs"]


def test_sentencepiece_option_round_trip(freedict_dataset):
  dataset, root = freedict_dataset
  spm = registry.get_dataset("freedict_deu_eng", data_dir=str(root / "data"),
                             tokenizer="sentencepiece", vocab_size=60)
  assert isinstance(spm.input_vocab, SentencePieceVocabulary)
  assert os.path.exists(spm.builder.data_path / "spm_inputs_60.model")  # saved beside the data
  for r in spm.texts("test"):
    ids = spm.target_vocab.encode(r["targets"])
    assert min(ids) > 3  # specials 0-3 are pad, bos, eos, unk
    assert spm.target_vocab.decode(ids + [2, 0]) == r["targets"]
  assert spm.input_vocab.size <= 60
  # The same through an experiment config's data block (what the trainer and sweeps call).
  block = experiment.base_config().data
  block.update(name="freedict_deu_eng", data_dir=str(root / "data"), tokenizer="sentencepiece",
               vocab_size=60)
  from_config = registry.from_config(block)
  assert isinstance(from_config.target_vocab, SentencePieceVocabulary)
  assert [from_config.input_vocab.encode(r["inputs"]) for r in spm.texts("dev")] == [
      spm.input_vocab.encode(r["inputs"]) for r in spm.texts("dev")]


def test_dictd_format(tmp_path):
  text = ("00-database-info\n     \"Apfel\" is a noun (header, 5 spaces: not an example)\n"
          "fix /fɪks/ <adv>\n pronto <adv>\n"
          "      \"Du solltest mal ganz fix herkommen.\"  - You'd better get here pronto.\n"
          "Größe\n      \"Größe  zeigen\"  - to show   greatness\n")
  path = tmp_path / "freedict-deu-eng.dict.dz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write(text)
  assert freedict.parse_dictd(path) == [
      ("Du solltest mal ganz fix herkommen.", "You'd better get here pronto."),
      ("Größe zeigen", "to show greatness")]
  assert freedict.find_source_file(tmp_path, search_default=False) == str(path)
  bad = tmp_path / "bad-deu-eng.dict"
  bad.write_text(text + "      \"unterminated - nothing\n", encoding="utf-8")
  with pytest.raises(DataFormatError, match=rf"{bad}:8: expected"):
    freedict.parse_dictd(bad)


def test_malformed_tei_reports_line(tmp_path):
  path = _write_tei(str(tmp_path), n_entries=3, extra="  <entry><sense></entry>\n")
  with pytest.raises(DataFormatError, match=rf"{path}:\d+: malformed XML"):
    freedict.parse_tei(path)
  with open(path, encoding="utf-8") as f:
    bad_line = next(i for i, line in enumerate(f, 1) if "<entry><sense></entry>" in line)
  with pytest.raises(DataFormatError, match=rf":{bad_line}: "):
    freedict.parse_tei(path)


def test_missing_file_is_a_clear_error_and_builds_nothing(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(MissingDataError, match="apt-get install dict-freedict-deu-eng"):
    registry.get_dataset("freedict_deu_eng", data_dir=str(tmp_path / "d"), manual_dir=str(empty))
  assert not os.path.exists(tmp_path / "d" / "freedict_deu_eng" / "1.0.0")

"""helpers.models and helpers.e5_convert: the offline registry loads the right models.

The converted multilingual-e5-small is checked by what it is for (English and Chinese
translations land close together), its tokenizer by what broke before (the normaliser),
and the converter by its checksum guard. The conversion runs once into cache_dir() and is
reused by later runs.
"""
import copy
import shutil
import time

import numpy as np
import pytest
import torch

from helpers import e5_convert
from helpers.config import get_profile, with_overrides
from helpers.models import (
    ModelUnavailableError,
    describe_models,
    load_encoder,
    trim_vocabulary,
)
from helpers.tokenization import train_wordpiece
from helpers.runtime import SETTINGS

MIXED_TEXTS = [
    "The hotel was clean, but breakfast was cold.",
    "这家酒店很干净，但是早餐是凉的。",
    "Battery life? Terrible — two hours at most!",
    "快递很快！包装也很好，五星好评～",
    "《红楼梦》是一本好书：人物多、故事长；值得一读。",
    "   extra   spaces\tand\nnew lines  ",
]


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def e5():
    model, tokenizer = load_encoder("multilingual-e5-small")
    return model.eval(), tokenizer


def mean_pooled(model, tokenizer, texts):
    """e5's sentence vectors: "query: " prefix, mean over real tokens, unit length."""
    batch = tokenizer(["query: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_e5_finds_the_chinese_translation_of_english_sentences(e5):
    from helpers.data import load_parallel

    pairs = load_parallel()
    picked = pairs.select(range(0, len(pairs), len(pairs) // 200)).select(range(200))
    english = mean_pooled(*e5, picked["en"])
    chinese = mean_pooled(*e5, picked["zh"])
    accuracy = ((english @ chinese.T).argmax(1) == torch.arange(200)).float().mean().item()
    print(f"top-1 English->Chinese retrieval over 200 HSK pairs: {accuracy:.1%}")
    assert accuracy >= 0.9


def test_e5_tokenizer_knows_chinese_punctuation(e5):
    _, tokenizer = e5
    texts = ["你好，很高兴认识你。", "真的吗？太好了！", "苹果、香蕉和橙子：我都喜欢；",
             "他说：“我们走吧。”", "（这是括号）", "我在读《三体》。"]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids, (text, tokenizer.convert_ids_to_tokens(ids))


def test_e5_normaliser_does_what_the_file_map_says(e5):
    _, tokenizer = e5
    parsed = e5_convert.read_e5_file(e5_convert.find_e5_file().read_bytes())
    normalise = tokenizer.backend_tokenizer.normalizer.normalize_str
    wrong = {hex(cp): (normalise(chr(cp)), out) for cp, out in parsed["norm"].items()
             if normalise(chr(cp)) != out}
    assert not wrong
    # NFKC would turn the full-width tilde into "~"; the file's map leaves it alone
    assert normalise("好～") == "好～"
    assert normalise("a\u200bb\x07c") == "a bc"


def test_e5_tokenizer_survives_save_and_reload(e5, tmp_path):
    from transformers import AutoTokenizer

    _, tokenizer = e5
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(MIXED_TEXTS)["input_ids"] == tokenizer(MIXED_TEXTS)["input_ids"]
    pair = tokenizer("first", "second")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(pair) == ["<s>", "▁first", "</s>", "</s>",
                                                     "▁second", "</s>"]


def test_dequantise_q4_reads_scale_and_nibbles():
    # one block: scale 0.5, byte j holds weight j in its low and weight 16 + j in its high nibble
    low = np.arange(16, dtype=np.uint8)
    high = np.full(16, 15, dtype=np.uint8)
    block = np.float16(0.5).tobytes() + ((high << 4) | low).tobytes()
    weights = e5_convert.dequantise_q4(block * 2, 64)
    expected = np.concatenate([(np.arange(16) - 8) * 0.5, np.full(16, (15 - 8) * 0.5)])
    assert np.array_equal(weights, np.concatenate([expected, expected]))
    with pytest.raises(ValueError, match="directory says"):
        e5_convert.dequantise_q4(block, 64)


def test_converter_refuses_a_corrupted_file(tmp_path):
    corrupted = tmp_path / "e5.bin"
    shutil.copyfile(e5_convert.find_e5_file(), corrupted)
    with open(corrupted, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    target = tmp_path / "out"
    with pytest.raises(e5_convert.ChecksumError, match="sha256"):
        e5_convert.convert(source=corrupted, target=target)
    assert not target.exists()


def test_minilm_turns_chinese_into_unknown_tokens():
    from helpers.data import load_reviews

    model, tokenizer = load_encoder("minilm-en")
    assert model.config.num_hidden_layers == 6
    reviews = load_reviews("train", langs=["zh"])["text"][:50]
    ids = [i for row in tokenizer(reviews, add_special_tokens=False)["input_ids"] for i in row]
    share = sum(i == tokenizer.unk_token_id for i in ids) / len(ids)
    print(f"minilm-en: {share:.0%} of the tokens of 50 Chinese reviews are [UNK]")
    assert share > 0.5


TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)


def test_mini_bert_fresh_then_from_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(SETTINGS, "build", tmp_path)
    profile = with_overrides(get_profile("smoke"), mini_bert=TINY)
    tokenizer = train_wordpiece(MIXED_TEXTS * 5, vocab_size=120)
    model, tok = load_encoder("mini-bert", num_labels=2, profile=profile, tokenizer=tokenizer)
    assert "freshly initialised" in capsys.readouterr().out
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(tokenizer)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    batch = tok(MIXED_TEXTS, padding=True, return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape == (len(MIXED_TEXTS), 2)

    # what notebook 03 leaves behind: weights, config and tokenizer in one directory
    checkpoint = tmp_path / "checkpoints" / "mini-bert"
    model.save_pretrained(checkpoint)
    tok.save_pretrained(checkpoint)
    again, tok2 = load_encoder("mini-bert", num_labels=2)
    assert "pretrained checkpoint" in capsys.readouterr().out
    assert tok2(MIXED_TEXTS)["input_ids"] == tok(MIXED_TEXTS)["input_ids"]
    model.eval()
    again.eval()
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, model(**batch).logits)


def test_trimmed_e5_gives_the_same_tokens_and_states(e5, tmp_path):
    full_model, full_tok = e5
    texts = ["query: " + t for t in MIXED_TEXTS]
    model, tok = trim_vocabulary(copy.deepcopy(full_model), full_tok, texts)
    for text in texts:
        assert (tok.convert_ids_to_tokens(tok(text)["input_ids"])
                == full_tok.convert_ids_to_tokens(full_tok(text)["input_ids"]))
    assert model.num_parameters() < full_model.num_parameters() / 4
    # same tokens, same embedding rows: the encoder computes exactly what it did before
    full_batch = full_tok(texts, padding=True, return_tensors="pt")
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = full_model(**full_batch).last_hidden_state
        after = model(**batch).last_hidden_state
    assert torch.allclose(before, after, atol=1e-5)
    # a text the trimmed vocabulary never saw falls back to <unk> but still works
    assert tok.unk_token_id in tok("Żółć 鑫")["input_ids"]
    # saved, it loads back by its directory, here with a classification head
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    classifier, reloaded_tok = load_encoder(str(tmp_path), num_labels=2)
    assert classifier.config.id2label == {0: "negative", 1: "positive"}
    assert reloaded_tok(texts)["input_ids"] == tok(texts)["input_ids"]
    assert torch.equal(classifier.bert.embeddings.word_embeddings.weight,
                       model.embeddings.word_embeddings.weight)


def test_trim_needs_a_unigram_tokenizer():
    with pytest.raises(ValueError, match="Unigram"):
        load_encoder("minilm-en", num_labels=2, trim_to=MIXED_TEXTS)


def test_offline_hub_id_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setattr(SETTINGS, "offline", True)
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as error:
        load_encoder("bert-base-multilingual-cased", num_labels=2)
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert "\n" not in message and "multilingual-e5-small" in message and "minilm-en" in message


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="num_labels"):
        load_encoder("minilm-en", num_labels=0)
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_encoder("minilm-en", trust_remote_code=True)
    with pytest.raises(ModelUnavailableError, match="no model directory"):
        load_encoder(str(tmp_path / "missing"))
    with pytest.raises(ModelUnavailableError, match="config.json"):
        load_encoder(str(tmp_path))


def test_registry_table_counts_what_the_models_hold(e5, tmp_path, monkeypatch):
    monkeypatch.setattr(SETTINGS, "build", tmp_path)  # mini-bert: the profile's size
    table = describe_models(get_profile("smoke")).set_index("name")
    assert list(table.index[:3]) == ["multilingual-e5-small", "minilm-en", "mini-bert"]
    model, _ = e5
    assert table.loc["multilingual-e5-small", "parameters"] == model.num_parameters()
    assert table.loc["multilingual-e5-small", "layers"] == 12
    assert table.loc["mini-bert", "hidden"] == get_profile("smoke").mini_bert["hidden_size"]
    assert 0.75 < table.loc["multilingual-e5-small", "embedding share"] < 0.9

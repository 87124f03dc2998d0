"""helpers.tokenization: the BERT-style WordPiece tokenizer of mini-bert."""
import pytest

from helpers import tokenization
from helpers.config import get_profile
from helpers.tokenization import SPECIAL_TOKENS, course_tokenizer, train_wordpiece
from helpers.runtime import SETTINGS

TEXTS = [
    "The hotel was clean and the staff were friendly.",
    "The battery died after two hours; the screen is too dark.",
    "这家酒店很干净，服务员也很友好。",
    "电池用了两个小时就没电了！屏幕太暗。",
    "I loved this book: the characters feel real.",
    "这本书的人物很真实，我很喜欢。",
] * 10


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(TEXTS, vocab_size=150)


def test_special_tokens_come_first(tokenizer):
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3, 4]
    assert tokenizer.pad_token_id == 0 and tokenizer.mask_token == "[MASK]"


def test_each_chinese_character_is_a_token(tokenizer):
    tokens = tokenizer.tokenize("酒店很干净")
    assert tokens == list("酒店很干净")


def test_english_words_split_into_marked_pieces():
    tokenizer = train_wordpiece(TEXTS, vocab_size=90)
    tokens = tokenizer.tokenize("friendly characters")
    assert len(tokens) > 2 and any(t.startswith("##") for t in tokens)
    assert tokenizer.decode(tokenizer("friendly characters")["input_ids"],
                            skip_special_tokens=True) == "friendly characters"


def test_pairs_get_segment_ids(tokenizer):
    encoded = tokenizer("很干净", "clean")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens == ["[CLS]", "很", "干", "净", "[SEP]", "clean", "[SEP]"]
    assert encoded["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1]


def test_save_and_reload_give_the_same_ids(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    mixed = ["Clean hotel, 很干净!", "电池 battery 没电了", "unseen 鑫 words"]
    assert reloaded(mixed)["input_ids"] == tokenizer(mixed)["input_ids"]
    assert reloaded("a", "b")["token_type_ids"] == tokenizer("a", "b")["token_type_ids"]


def test_lowercase_option():
    upper = train_wordpiece(TEXTS, vocab_size=150, lowercase=True).tokenize("THE HOTEL")
    assert upper == ["the", "hotel"]


def test_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="non-empty"):
        train_wordpiece(["", "   "], vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece(TEXTS, vocab_size=3)


def test_course_tokenizer_is_trained_once_then_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(SETTINGS, "cache", tmp_path)
    first = course_tokenizer(get_profile("smoke"))
    assert "training" in capsys.readouterr().out
    assert (tmp_path / "tokenizers" / f"wordpiece-2000-smoke-{tokenization.RECIPE}" / "tokenizer.json").is_file()
    second = course_tokenizer(get_profile("smoke"))
    assert capsys.readouterr().out == ""
    sample = ["这家酒店很干净。", "The staff were friendly."]
    assert second(sample)["input_ids"] == first(sample)["input_ids"]
    assert len(first) == 2000
    # every Chinese character of a course review is a known token or [UNK], never a "##" piece
    assert all(not t.startswith("##") for t in first.tokenize("这家酒店很干净"))

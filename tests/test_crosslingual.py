import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from helpers.crosslingual import (alignment_by_layer, english_lexicon, first_gloss,
                                  layer_embeddings, retrieval_top1, segment, translate_words,
                                  translate_words_en_zh, unk_rate)
from helpers.heads import MeanPoolForSequenceClassification, mean_pool

TOY = {
    "酒店": ["hotel"],
    "酒": ["wine"],
    "店": ["shop"],
    "不错": ["(coll.) not bad", "pretty good"],
    "不": ["no; not so"],
    "研究": ["research"],
    "研究生": ["graduate student"],
    "生命": ["life"],
    "命": ["fate"],
    "起源": ["origin"],
    "也": ["surname Ye", "also"],
    "了": ["(completed action marker)", "to finish"],
}


def test_segment_takes_the_longest_word():
    assert segment("酒店不错", TOY) == ["酒店", "不错"]
    assert segment("酒不", TOY) == ["酒", "不"]


def test_segment_is_greedy_even_when_that_is_wrong():
    # "research the origin of life" is 研究 生命 起源; longest-first swallows 生
    assert segment("研究生命起源", TOY) == ["研究生", "命", "起源"]


def test_segment_keeps_unknown_runs_together():
    assert segment("第87页iPad，不错!", TOY) == ["第", "87", "页", "iPad", "，", "不错", "!"]
    assert segment("a b", TOY) == ["a", "b"]  # spaces separate and disappear
    assert segment("", TOY) == []


def test_segment_rejects_non_strings():
    with pytest.raises(TypeError):
        segment(["酒店"], TOY)


def test_first_gloss_skips_notes_and_remarks():
    assert first_gloss(["surname Ye", "(adverb) also; both"]) == "also"
    assert first_gloss(["(completed action marker)", "to finish"]) == "to finish"
    assert first_gloss(["variant of 讚", "to praise"]) == "to praise"
    assert first_gloss(["(coll.)"]) is None


def test_translate_words():
    assert translate_words("酒店也不错。", TOY) == "hotel also not bad ."
    assert translate_words("好", TOY) == "好"  # not in the dictionary: kept as it is


class _FakeTokenizer:
    unk_token_id = 0

    def __call__(self, texts, add_special_tokens=True):
        vocab = {"good": 1, "bad": 2}
        return {"input_ids": [[vocab.get(w, 0) for w in t.split()] for t in texts]}


def test_unk_rate():
    assert unk_rate(_FakeTokenizer(), ["good ???", "bad bad"]) == pytest.approx(0.25)
    with pytest.raises(TypeError):
        unk_rate(_FakeTokenizer(), "good")


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_retrieval_top1():
    a = np.eye(3)
    assert retrieval_top1(a, a) == 1.0
    assert retrieval_top1(a, a[[1, 0, 2]]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        retrieval_top1(a, a[:2])


def test_alignment_by_layer_separates_pairs_from_random_pairs():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 50, 8))
    emb_a = base
    emb_b = base.copy()
    emb_b[0] = rng.normal(size=(50, 8))  # layer 0: no alignment; layer 1: identical
    table = alignment_by_layer(emb_a, emb_b)
    assert list(table["layer"]) == [0, 1]
    assert table.loc[1, "translation_cosine"] == pytest.approx(1.0)
    assert table.loc[1, "retrieval_top1"] == 1.0
    assert abs(table.loc[0, "difference"]) < 0.3
    assert table.loc[1, "difference"] > 0.5


def test_layer_embeddings_shape_and_order():
    from helpers.tokenization import train_wordpiece

    tokenizer = train_wordpiece(["good hotel", "bad room", "酒店不错"] * 5, vocab_size=60)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32))
    texts = ["good hotel", "bad room room room", "酒店不错"]
    together = layer_embeddings(model, tokenizer, texts, batch_size=3)
    apart = layer_embeddings(model, tokenizer, texts, batch_size=1)
    assert together.shape == (3, 3, 16)  # embeddings + 2 layers, 3 texts, hidden 16
    np.testing.assert_allclose(together, apart, atol=1e-5)  # padding does not leak in


def _tiny_classifier(vocab_size=50, num_labels=3, layers=2):
    torch.manual_seed(0)
    return MeanPoolForSequenceClassification(BertConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=32, num_labels=num_labels))


def test_mean_pool_classifier_outputs_and_padding():
    model = _tiny_classifier().eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2]),
                output_hidden_states=True)
    assert out.logits.shape == (2, 3) and out.loss.ndim == 0
    assert len(out.hidden_states) == 3  # embeddings + 2 layers
    alone = model(input_ids=ids[:1, :3], attention_mask=mask[:1, :3]).logits
    torch.testing.assert_close(alone, out.logits[:1], atol=1e-5, rtol=1e-5)  # padding ignored
    assert model.config.num_labels == 3
    assert model.get_input_embeddings() is model.bert.embeddings.word_embeddings


def test_mean_pool_classifier_trains_with_finetune():
    from datasets import Dataset

    from helpers.config import get_profile
    from helpers.tokenization import train_wordpiece
    from helpers.training import finetune, predict

    texts = ["good good", "great good", "bad bad", "awful bad"] * 8
    labels = [1, 1, 0, 0] * 8
    tokenizer = train_wordpiece(texts, vocab_size=30)
    model = _tiny_classifier(vocab_size=len(tokenizer), num_labels=2, layers=1)
    ds = Dataset.from_dict({"text": texts, "label": labels})
    result = finetune(model, tokenizer, ds, ds, profile=get_profile("smoke"), epochs=8,
                      learning_rate=5e-3, freeze_embeddings=False, progress=False)
    probs = predict(result.model, tokenizer, ["good good", "bad bad"])
    assert probs.shape == (2, 2)
    assert probs[0].argmax() == 1 and probs[1].argmax() == 0


def test_english_lexicon_reads_the_dictionary_backwards():
    toy = {"好": ["good; well"], "佳": ["good; beautiful"], "良好": ["good"], "吃": ["to eat"],
           "酒店": ["hotel"], "不错": ["(coll.) not bad"], "也": ["surname Ye", "also"]}
    # without texts to count, the shorter word and then the earlier entry win
    assert english_lexicon(toy) == {"good": "好", "eat": "吃", "hotel": "酒店", "also": "也"}
    # the word met most often in Chinese text wins over a shorter, earlier one
    assert english_lexicon(toy, ["服务良好。", "良好的酒店"])["good"] == "良好"


def test_translate_words_en_zh():
    lexicon = {"good": "好", "hotel": "酒店", "eat": "吃"}
    assert translate_words_en_zh("Good hotel!", lexicon) == "好酒店!"
    # untranslated words keep their spaces between each other, numbers survive
    assert translate_words_en_zh("The hotel was good, 5 stars", lexicon) == "The酒店was好,5 stars"
    assert translate_words_en_zh("", lexicon) == ""
    with pytest.raises(TypeError):
        translate_words_en_zh(None, lexicon)


def test_english_lexicon_on_cc_cedict():
    from helpers.data import load_cedict

    dictionary = load_cedict()
    # with nothing counted, a rare word can win ("good" -> 善); the counts pick the common one
    assert english_lexicon(dictionary)["good"] != "好"
    lexicon = english_lexicon(dictionary, ["房间很好，电池也好。"])
    assert len(lexicon) > 5000
    assert (lexicon["good"], lexicon["room"], lexicon["battery"]) == ("好", "房间", "电池")

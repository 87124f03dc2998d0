"""The WordPiece tokenizer of the course's from-scratch BERT ("mini-bert").

`train_wordpiece` builds a BERT-style tokenizer from any texts; `course_tokenizer` trains
one on the course corpora (English and Chinese) once and keeps it in the cache, so the
pretraining notebook, the fine-tuning notebooks and the command line share one vocabulary.
"""
from __future__ import annotations


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] = 0, as BERT expects
MODEL_INPUTS = ["input_ids", "token_type_ids", "attention_mask"]


def train_wordpiece(texts, vocab_size: int, lowercase: bool = False,
                    model_max_length: int = 512, limit_alphabet: int | None = None):
    """Train a BERT-style WordPiece tokenizer on `texts` (an iterable of strings).

    BertNormalizer puts spaces around every CJK character, so each Chinese character is its
    own word and Chinese never needs "##" pieces; other words split into pieces marked "##".
    Pairs become [CLS] A [SEP] B [SEP] with token_type_ids 0 for A and 1 for B (what BERT's
    next-sentence task reads).

    Every distinct character starts as a token, and Chinese has thousands, so only the
    `limit_alphabet` most frequent characters are kept (default: half the vocabulary); the
    other half is left for English words and word pieces. Rarer characters become [UNK].
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("train_wordpiece needs at least one non-empty text")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be larger than the {len(SPECIAL_TOKENS)} special "
                         f"tokens, got {vocab_size}")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, continuing_subword_prefix="##",
        limit_alphabet=limit_alphabet or vocab_size // 2, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length, model_input_names=MODEL_INPUTS,
        pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]")


def course_texts(max_documents: int | None = None) -> list[str]:
    """Sentences of the English and Chinese pretraining corpora plus the training reviews.

    `max_documents` caps the documents taken from each corpus (None = all of them).
    """
    from helpers.data import load_corpus, load_reviews

    texts = []
    for lang in ("en", "zh"):
        documents = load_corpus(lang)
        for document in documents[:max_documents]:
            texts.extend(document)
    texts.extend(load_reviews("train")["text"])
    return texts


# Part of the cache key: bump it whenever train_wordpiece's settings or course_texts change,
# so a tokenizer trained by an older recipe is never silently reused.
RECIPE = "r2"
MARKER = "CACHED.json"  # the files' sizes and sha256, written last


def course_tokenizer(profile):
    """The WordPiece tokenizer of mini-bert for `profile`: trained on the course corpora the
    first time, then read from cache_dir()/tokenizers/wordpiece-<vocab>-<profile>-<RECIPE>."""
    from transformers import PreTrainedTokenizerFast

    from helpers.io import building, files_intact, record_files
    from helpers.runtime import cache_dir

    vocab_size = profile.tokenizer_vocab_size
    max_length = profile.mini_bert.get("max_position_embeddings", 512)
    path = cache_dir() / "tokenizers" / f"wordpiece-{vocab_size}-{profile.name}-{RECIPE}"
    if files_intact(path, MARKER):
        return PreTrainedTokenizerFast.from_pretrained(path)
    # the pretraining notebook reads at most this many documents per language, so the
    # tokenizer needs no more (and smoke stays fast)
    texts = course_texts(profile.pretrain_max_documents)
    print(f"training a {vocab_size}-piece WordPiece tokenizer on {len(texts):,} course texts "
          f"(once; cached in {path})", flush=True)
    tokenizer = train_wordpiece(texts, vocab_size, model_max_length=max_length)
    with building(path) as scratch:
        tokenizer.save_pretrained(scratch)
        record_files(scratch, MARKER, vocab_size=vocab_size, recipe=RECIPE)
    return tokenizer



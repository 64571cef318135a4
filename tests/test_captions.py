"""Captions, data and model side: COCO caption annotations packed into shards, the tokenizer built at
pack time, token ids in the stream (seeded caption draws), and the caption-conditioned nets."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ganpaint import config as config_lib
from ganpaint.data.captions import TOKENIZER_FILE, load_tokenizer
from ganpaint.data.shards import pack
from ganpaint.data.stream import iterate_split, train_loader
from ganpaint.errors import UserError
from ganpaint.models.caption import CaptionCritic, CaptionUNet, TextEncoder

# Saturated colours (RGB) an object in the image centre may take: the surroundings never show it,
# so only the caption tells which.
COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 50, 230),
    "yellow": (235, 225, 30),
    "magenta": (220, 40, 220),
    "cyan": (40, 220, 225),
}
SHAPES = ("circle", "square")
TRAIN, VAL, UNCAPTIONED = 48, 12, 4  # the first UNCAPTIONED train images have no annotation


def draw(index: int, side: int = 64) -> tuple[np.ndarray, str, str]:
    """(BGR image, colour, shape): a muted gradient with a coloured shape in the centre half."""
    rng = np.random.default_rng(index)
    colour, shape = list(COLOURS)[index % len(COLOURS)], SHAPES[(index // len(COLOURS)) % 2]
    ramp = np.linspace(0, 1, side, dtype=np.float32)[None, :, None]
    start, end = rng.uniform(90, 160, 3), rng.uniform(90, 160, 3)
    image = np.broadcast_to(start + (end - start) * ramp, (side, side, 3)).astype(np.uint8).copy()
    bgr = COLOURS[colour][::-1]
    centre, reach = side // 2, side * 13 // 64
    if shape == "circle":
        cv2.circle(image, (centre, centre), reach, bgr, -1, cv2.LINE_AA)
    else:
        cv2.rectangle(
            image, (centre - reach, centre - reach), (centre + reach, centre + reach), bgr, -1
        )
    return image, colour, shape


def captions_of(colour: str, shape: str) -> list[str]:
    return [
        f"A {colour} {shape}.",
        f"a {shape} that is {colour}",
        f"{colour.upper()} {shape} in the middle of the picture",
    ]


def make_coco(root: Path) -> Path:
    """COCO 2017 layout: train2017/, val2017/, annotations/captions_{train,val}2017.json."""
    for split, first, count in (("train", 0, TRAIN), ("val", 1000, VAL)):
        folder = root / f"{split}2017"
        folder.mkdir(parents=True)
        images, annotations = [], []
        for index in range(first, first + count):
            image, colour, shape = draw(index)
            name = f"{index:012d}.jpg"
            cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_JPEG_QUALITY, 98])
            images.append({"id": index, "file_name": name, "height": 64, "width": 64})
            if split == "train" and index < UNCAPTIONED:
                continue
            for caption in captions_of(colour, shape):
                annotations.append(
                    {"id": len(annotations) + 7 * index, "image_id": index, "caption": caption}
                )
        (root / "annotations").mkdir(exist_ok=True)
        document = {"images": images, "annotations": annotations}
        (root / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(document))
    return root


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return make_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def caption_shards(coco_root, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("caption_shards")
    pack("coco", output, input=coco_root, size=32, split_max_count=16, workers=1, progress=False)
    return output


def data_config(shards: Path, *overrides: str) -> config_lib.DataConfig:
    values = [
        f"data.shards={shards}",
        "data.captions=true",
        "data.caption_tokens=12",
        "data.image_px=32",
        "data.resize_min_px=32",
        "data.resize_max_px=32",
        "data.workers=0",
        "masks.local_px=16",
        "masks.hole_min_px=8",
        "masks.hole_max_px=16",
        *overrides,
    ]
    return config_lib.load(None, values).data


# ---- packing ---------------------------------------------------------------------------------------


def test_manifest_counts_captions_and_saves_a_tokenizer(caption_shards):
    manifest = json.loads((caption_shards / "manifest.json").read_text())
    captions = manifest["captions"]
    assert captions["annotations"] == ["captions_train2017.json", "captions_val2017.json"]
    assert captions["images_with_captions"] == {"train": TRAIN - UNCAPTIONED, "val": VAL, "test": 0}
    assert captions["images_without_captions"] == {"train": UNCAPTIONED, "val": 0, "test": 0}
    # [PAD], [UNK], "a", ".", the 6 colours, 2 shapes, "that is in the middle of picture"
    assert captions["vocabulary_size"] == 2 + 2 + 6 + 2 + 7
    json.loads((caption_shards / TOKENIZER_FILE).read_text())  # plain JSON
    tokenizer = load_tokenizer(caption_shards)
    assert tokenizer.encode("A RED circle.").ids[1:3] == [
        tokenizer.token_to_id("red"),
        tokenizer.token_to_id("circle"),
    ]
    assert tokenizer.encode("a purple circle").ids[1] == 1  # unknown word -> [UNK]
    with tarfile.open(caption_shards / "train-000000.tar") as tar:
        first = json.loads(tar.extractfile("000000000000.json").read())
        captioned = json.loads(tar.extractfile("000000000006.json").read())
    assert "captions" not in first
    assert captioned["captions"] == captions_of(*draw(6)[1:])


def test_pack_without_annotations_has_no_captions(coco_root, tmp_path):
    bare = tmp_path / "bare"
    (bare / "train2017").mkdir(parents=True)
    for path in sorted((coco_root / "train2017").iterdir())[UNCAPTIONED - 1 : UNCAPTIONED + 3]:
        (bare / "train2017" / path.name).write_bytes(path.read_bytes())
    manifest = pack("coco", tmp_path / "out", input=bare, size=32, workers=1, progress=False)
    assert "captions" not in manifest and not (tmp_path / "out" / TOKENIZER_FILE).exists()
    with pytest.raises(UserError, match="tokenizer.json: not found"):
        load_tokenizer(tmp_path / "out")
    # Adding the annotations later re-packs the shards with them (their plan changed).
    (bare / "annotations").mkdir()
    document = json.loads((coco_root / "annotations" / "captions_train2017.json").read_text())
    (bare / "annotations" / "captions_train2017.json").write_text(json.dumps(document))
    manifest = pack("coco", tmp_path / "out", input=bare, size=32, workers=1, progress=False)
    assert manifest["captions"]["images_with_captions"]["train"] == 3
    assert manifest["captions"]["images_without_captions"]["train"] == 1
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        assert "captions" in json.loads(tar.extractfile(f"{UNCAPTIONED:012d}.json").read())


def test_malformed_annotations_and_tokenizer_are_one_line_errors(coco_root, tmp_path):
    broken = tmp_path / "broken"
    (broken / "val2017").mkdir(parents=True)
    (broken / "annotations").mkdir()
    (broken / "annotations" / "captions_val2017.json").write_text('{"images": []}')
    with pytest.raises(UserError) as caught:
        pack("coco", tmp_path / "out", input=broken, size=32, workers=1, progress=False)
    assert "captions_val2017.json" in str(caught.value) and "\n" not in str(caught.value)
    shards = tmp_path / "fake"
    shards.mkdir()
    (shards / TOKENIZER_FILE).write_text('{"not": "a tokenizer"}')
    with pytest.raises(UserError, match="not a tokenizer file"):
        load_tokenizer(shards)


# ---- the stream ------------------------------------------------------------------------------------


def colour_of(image: np.ndarray) -> str:
    """The name of the colour nearest the centre pixel of a uint8 CHW image."""
    centre = image[:, image.shape[1] // 2, image.shape[2] // 2].astype(float)
    return min(COLOURS, key=lambda name: np.abs(np.array(COLOURS[name]) - centre).sum())


def test_stream_yields_token_ids_of_one_of_each_images_captions(caption_shards):
    tokenizer = load_tokenizer(caption_shards)
    data = data_config(caption_shards)
    loader = iter(train_loader(data, 8, 0, 1, seed=3, start_step=0))
    drawn, empty = set(), 0
    for _ in range(12):  # two epochs of the 44 + 4 train images
        images, tokens = next(loader)
        assert images.shape == (8, 3, 32, 32) and tokens.shape == (8, 12)
        assert tokens.dtype == torch.int64
        for image, ids in zip(images.numpy(), tokens.tolist(), strict=True):
            words = tokenizer.decode([i for i in ids if i]).split()
            if not words:
                empty += 1  # an image without captions
                continue
            assert colour_of(image) in words
            drawn.add(" ".join(words))
    assert empty > 0
    assert len(drawn) > 2 * len(COLOURS) * len(SHAPES) // 2  # several phrasings were drawn


def test_caption_draws_replay_for_the_same_seed_and_step(caption_shards):
    data = data_config(caption_shards)

    def first_batches(seed: int, start_step: int) -> list[torch.Tensor]:
        loader = iter(train_loader(data, 8, 0, 1, seed, start_step))
        return [next(loader)[1] for _ in range(4)]

    same = zip(first_batches(0, 5), first_batches(0, 5), strict=True)
    assert all(torch.equal(a, b) for a, b in same)
    other = zip(first_batches(0, 5), first_batches(1, 5), strict=True)
    assert not all(torch.equal(a, b) for a, b in other)


def test_evaluation_reads_each_images_first_caption(caption_shards):
    tokenizer = load_tokenizer(caption_shards)
    (images, tokens), *rest = iterate_split(caption_shards, "val", 32, 16, caption_tokens=12)
    assert not rest and images.shape == (VAL, 3, 32, 32)
    for index, ids in enumerate(tokens.tolist()):
        colour, shape = draw(1000 + index)[1:]
        assert tokenizer.decode([i for i in ids if i]) == f"a {colour} {shape} ."


def test_captions_need_a_tokenizer(synthetic_shards):
    with pytest.raises(UserError, match="tokenizer.json"):
        train_loader(data_config(synthetic_shards), 4, 0, 1, 0, 0)


# ---- the nets --------------------------------------------------------------------------------------


def test_text_encoder_ignores_trailing_padding():
    encoder = TextEncoder(20)
    words = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 0, 0, 0]])
    assert torch.allclose(encoder(words), encoder(padded), atol=1e-6)
    assert encoder(torch.zeros(2, 4, dtype=torch.long)).shape == (2, 128)


def test_caption_nets_shapes_and_the_caption_matters():
    torch.manual_seed(0)
    generator, critic = CaptionUNet(32, 8, 20).eval(), CaptionCritic(16, 8, 20).eval()
    image, tokens = torch.rand(2, 3, 32, 32), torch.tensor([[2, 3, 0], [2, 4, 0]])
    output = generator(image, None, tokens)
    assert output.shape == (2, 3, 16, 16)
    swapped = generator(image, None, tokens.flip(0))
    assert not torch.allclose(output, swapped)
    patch = torch.rand(2, 3, 16, 16)
    assert critic(patch, tokens).shape == (2,)
    assert not torch.allclose(critic(patch, tokens), critic(patch, tokens.flip(0)))
    (output.mean() + critic(patch, tokens).sum()).backward()
    for net in (generator, critic):
        assert net.text.embedding.weight.grad is not None  # the text encoder trains with the net

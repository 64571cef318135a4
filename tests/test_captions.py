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
from safetensors.torch import load_file

import ganpaint
from ganpaint import cli
from ganpaint import config as config_lib
from ganpaint.config import ConfigError
from ganpaint.data.captions import TOKENIZER_FILE, CaptionTokens, load_tokenizer
from ganpaint.data.shards import pack
from ganpaint.data.stream import iterate_split, train_loader
from ganpaint.errors import UserError
from ganpaint.infer.export import load_generator
from ganpaint.infer.inpaint import caption_tokens
from ganpaint.models.caption import CaptionCritic, CaptionUNet, TextEncoder
from ganpaint.training import checkpoint
from ganpaint.training.loop import train

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
        "masks.kind=center",
        "masks.local_px=16",
        "masks.hole_min_px=16",
        "masks.hole_max_px=16",
        "model.family=wgan_unet_caption",
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
    tokens_of = CaptionTokens(tokenizer, 12)
    (images, tokens), *rest = iterate_split(caption_shards, "val", 32, 16, tokens_of=tokens_of)
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
    assert CaptionUNet(32, 8, 20).text.features == 16  # scales with the width, 128 at 64


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


# ---- the caption family, trained through the registry ---------------------------------------------


ROOT = Path(__file__).parent.parent
CONFIGS = ROOT / "configs"
# The caption preset at test size: 32 px images, width 8, a 64-row embedding, one critic update.
CAPTION_TEST_OVERRIDES = (
    "data.image_px=32",
    "data.resize_min_px=32",
    "data.resize_max_px=32",
    "data.batch_size=16",
    "data.workers=0",
    "data.caption_tokens=10",
    "data.val_images=12",
    "masks.hole_min_px=16",
    "masks.hole_max_px=16",
    "masks.local_px=16",
    "model.width=8",
    "model.disc_width=8",
    "model.vocabulary_size=64",
    "run.mixed_precision=fp32",
    "schedule.critic_steps=1",
    "log.every_steps=10",
    "log.image_every_steps=1000",
    "log.progress=none",
)


def caption_config(shards: Path, run_dir: Path, *overrides: str) -> config_lib.TrainConfig:
    values = [f"data.shards={shards}", f"run.dir={run_dir}", *CAPTION_TEST_OVERRIDES, *overrides]
    return config_lib.load(CONFIGS / "wgan_unet_coco_caption.yaml", values)


@pytest.fixture(scope="module")
def short_caption_run(caption_shards, tmp_path_factory) -> Path:
    """Two steps of the caption family on the fixture (plumbing, not learning)."""
    run_dir = tmp_path_factory.mktemp("short_caption_run") / "run"
    return train(caption_config(caption_shards, run_dir, "schedule.total_steps=2"))


def evaluate_run(run: Path, shards: Path, result: Path) -> dict:
    arguments = ["eval", "--run", str(run), "--shards", str(shards), "--count", "12"]
    assert cli.main([*arguments, "--device", "cpu", "--json", str(result)]) == 0
    return json.loads(result.read_text())["results"]


def inpaint_centre(run: Path, image: Path, output: Path, *caption: str) -> np.ndarray:
    """`ganpaint inpaint` of a 24 px centre hole; the RGB of the output's centre pixel."""
    arguments = ["inpaint", "--run", str(run), "--image", str(image), "--rect", "20,20,24,24"]
    arguments += ["--output", str(output), "--blend", "none", "--device", "cpu", *caption]
    assert cli.main(arguments) == 0
    return cv2.imread(str(output))[32, 32][::-1].astype(int)


def test_eval_reports_true_and_shuffled_captions(
    short_caption_run, caption_shards, tmp_path, capsys
):
    results = evaluate_run(short_caption_run, caption_shards, tmp_path / "eval.json")
    assert {"model", "model_shuffled_caption", "mean_fill", "telea"} <= results.keys()
    assert results["model"]["hole_psnr"] != results["model_shuffled_caption"]["hole_psnr"]
    assert "shuffled" in capsys.readouterr().out  # the table has its column


def test_inpaint_takes_a_caption_and_needs_one(short_caption_run, tmp_path, capsys):
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), draw(2000)[0])
    red = inpaint_centre(
        short_caption_run, image, tmp_path / "red.png", "--caption", "a red circle"
    )
    blue = inpaint_centre(
        short_caption_run, image, tmp_path / "blue.png", "--caption", "a blue one"
    )
    assert not np.array_equal(red, blue)  # the caption reaches the generator
    capsys.readouterr()
    missing = ["inpaint", "--run", str(short_caption_run), "--image", str(image), "--rect"]
    missing += ["20,20,8,8", "--output", str(tmp_path / "x.png"), "--device", "cpu"]
    assert cli.main(missing) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--caption" in error[0]


@pytest.mark.slow
def test_a_short_run_learns_from_the_caption(caption_shards, tmp_path):
    """40 steps at width 16: the object's colour is in the caption only,
    so the true caption's hole PSNR beats a shuffled one's, and inpaint paints the named colour."""
    overrides = ("schedule.total_steps=40", "model.width=16", "model.disc_width=16")
    run = train(caption_config(caption_shards, tmp_path / "run", *overrides))
    results = evaluate_run(run, caption_shards, tmp_path / "eval.json")
    true, shuffled = results["model"], results["model_shuffled_caption"]
    assert true["hole_psnr"] > shuffled["hole_psnr"] + 3, (true["hole_psnr"], shuffled["hole_psnr"])
    assert true["hole_ssim"] > shuffled["hole_ssim"]
    assert true["hole_psnr"] > results["mean_fill"]["hole_psnr"]
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), draw(2000)[0])  # a new image of the fixture's kind
    red = inpaint_centre(run, image, tmp_path / "red.png", "--caption", "a red circle")
    blue = inpaint_centre(run, image, tmp_path / "blue.png", "--caption", "a blue circle")
    assert red[0] > red[2] and blue[2] > blue[0]


def test_caption_is_refused_by_a_model_without_captions(synthetic_shards, make_config):
    config = make_config(
        synthetic_shards,
        **{"schedule.completion_steps": 1, "schedule.discriminator_steps": 0},
        **{"schedule.total_steps": 1},
    )
    exported = load_generator(train(config))
    with pytest.raises(UserError, match="not conditioned on captions"):
        caption_tokens(exported, "a red circle")
    assert caption_tokens(exported, None) is None


def test_caption_run_resumes_to_the_same_weights(caption_shards, tmp_path):
    """Stopped at step 3, inside the data segment [2, 4), and resumed: the caption draws replay."""
    common = ("checkpoint.every_steps=2", "checkpoint.keep=10", "data.batch_size=8")
    train(caption_config(caption_shards, tmp_path / "straight", *common, "schedule.total_steps=4"))
    train(caption_config(caption_shards, tmp_path / "resumed", *common, "schedule.total_steps=3"))
    train(caption_config(caption_shards, tmp_path / "resumed", *common, "schedule.total_steps=4"))
    for net in ("generator", "discriminator"):
        expected = load_file(str(checkpoint.latest(tmp_path / "straight") / f"{net}.safetensors"))
        actual = load_file(str(checkpoint.latest(tmp_path / "resumed") / f"{net}.safetensors"))
        assert all(torch.equal(expected[key], actual[key]) for key in expected), net


def test_caption_family_trains_and_exports_in_bf16(caption_shards, tmp_path):
    """The caption nets under bf16 autocast on the CPU: finite losses, an export that fills."""
    run = train(
        caption_config(
            caption_shards, tmp_path / "run", "run.mixed_precision=bf16", "schedule.total_steps=2"
        )
    )
    model = ganpaint.load(run)
    images, hole = torch.rand(2, 3, 32, 32), torch.zeros(2, 1, 32, 32)
    hole[..., 8:24, 8:24] = 1
    _, completed = model.complete(images, hole, model.encode_captions(["a cat", ""]))
    assert completed.dtype == torch.float32 and torch.isfinite(completed).all()


def test_caption_family_needs_caption_data(caption_shards, tmp_path):
    with pytest.raises(ConfigError, match="data.captions"):
        caption_config(caption_shards, tmp_path, "data.captions=false")
    with pytest.raises(ConfigError, match="'model.vocabulary_size': wgan_unet has no such setting"):
        caption_config(caption_shards, tmp_path, "model.family=wgan_unet")
    with pytest.raises(ConfigError, match="takes no captions"):
        config_lib.load(CONFIGS / "wgan_unet_coco.yaml", ["data.captions=true"])
    too_small = caption_config(caption_shards, tmp_path / "run", "model.vocabulary_size=8")
    with pytest.raises(UserError, match="model.vocabulary_size"):
        train(too_small)


def test_models_command_on_the_caption_preset(capsys):
    preset = str(CONFIGS / "wgan_unet_coco_caption.yaml")
    assert cli.main(["models", "--config", preset]) == 0
    out = capsys.readouterr().out
    # the write-up's U-Net, TConv1 reading Conv4's map + the 128-feature caption vector
    assert "CaptionUNet" in out and "256x4x4" in out and "CaptionCritic" in out
    assert "parameters 2,305,219" in out and "parameters 1,873,537" in out


@pytest.mark.slow
def test_two_processes_train_the_caption_family_identically_and_resume(caption_shards, tmp_path):
    from test_distributed import digests, launch, parameters_only

    run_dir = tmp_path / "run"
    preset = CONFIGS / "wgan_unet_coco_caption.yaml"

    def run(total_steps: int):
        return launch(
            ROOT / "tests" / "scripts" / "rank_digest.py",
            str(preset),
            *CAPTION_TEST_OVERRIDES,
            f"data.shards={caption_shards}",
            f"run.dir={run_dir}",
            f"schedule.total_steps={total_steps}",
            "checkpoint.every_steps=2",
        )

    first = run(4)
    assert first.returncode == 0, first.stderr[-3000:]
    rank0, rank1 = digests(run_dir, 0), digests(run_dir, 1)
    assert [row["world"] for row in rank0] == [2] * len(rank0)
    assert parameters_only(rank0) == parameters_only(rank1)
    second = run(6)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed {run_dir} at step 4" in second.stdout
    resumed0, resumed1 = digests(run_dir, 0)[len(rank0) :], digests(run_dir, 1)[len(rank0) :]
    assert resumed0 and parameters_only(resumed0) == parameters_only(resumed1)


def test_bench_feeds_random_captions(synthetic_shards, tmp_path):
    """`ganpaint bench` on the caption family: random word ids stand in for captions."""
    from ganpaint.training.bench import run_bench

    config = caption_config(synthetic_shards, tmp_path / "run", "data.batch_size=4")
    (row,) = run_bench(config, [], steps=1, warmup=0, data="synthetic")
    assert row["kind"] == "critic" and row["step_ms"] > 0

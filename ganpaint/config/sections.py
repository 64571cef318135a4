"""The settings every model family shares: the frozen section dataclasses and their choices.

A config is a `TrainConfig` of nine sections (run, data, masks, model, ...), each a frozen dataclass
whose fields are the keys of that section with their defaults; the tuples of allowed values for
the keys that name a choice (`MASK_KINDS`, `OPTIMIZERS`, ...) sit beside them. A family's own keys
are mixed into these classes by ganpaint/config/families.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MASK_KINDS = ("center", "rect", "multi_rect", "brush")
BRUSH_PRESETS = ("thin", "medium", "thick")
LR_DECAYS = ("none", "cosine")
OPTIMIZERS = ("adadelta", "adam")
PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PROGRESS_MODES = ("auto", "rich", "plain", "none")
# accelerate's tracker names -> the module each needs
TRACKER_MODULES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
}
HOLE_FILLS = ("mean", "zero", "pyramid", "harmonic", "biharmonic", "tension")  # completion.HoleFill
LOCAL_PLACEMENTS = ("centred", "random")
CROPS = ("random", "centre")
ON_BAD_SHARD = ("fail", "skip")  # what a remote shard whose sha256 is not the manifest's does
# The largest global batch accepted: far above any preset (96), and a typo like 1000000000
# otherwise ends in a terabyte allocation after the whole start-up.
MAX_BATCH_SIZE = 65536


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/demo"  # run directory: config, checkpoints, logs, exports
    seed: int = 0
    mixed_precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; weights stay fp32)
    cpu: bool = False  # force the CPU even where a GPU is present
    channels_last: bool = True
    compile: bool = False  # torch.compile each net (on CUDA; the CPU always trains eagerly)
    compile_mode: str = "default"  # torch.compile mode; max-autotune compiles for many minutes
    sync_batchnorm: bool = False
    deepspeed_config: str = ""  # path to a DeepSpeed JSON; empty = plain DDP
    max_bad_steps: int = 20  # consecutive non-finite losses before the run stops
    # Rollbacks to the newest checkpoint allowed when weights or optimiser state go inf/NaN (they
    # are never saved); one more stops the run, the last good checkpoint kept
    max_rollbacks: int = 2
    # Seconds the processes of a launch wait for each other to form the group (then one line)
    rendezvous_timeout_s: float = 300.0


@dataclass(frozen=True)
class DataConfig:
    shards: str = "shards/synthetic"  # directory holding manifest.json and the tar shards
    image_px: int = 64  # side of the square training crop
    resize_min_px: int = 64  # shortest side scaled to a random size in [min, max] before cropping
    resize_max_px: int = 64
    hflip: bool = True
    crop: str = "random"  # random: GLCIC's scale + crop | centre: Resize + CenterCrop (DCGAN)
    captions: bool = False  # also yield each image's caption token ids (caption-conditioned nets)
    caption_tokens: int = 32  # caption length in tokens (truncated / padded)
    batch_size: int = 16  # global batch per optimiser step, over all processes
    workers: int = 2  # DataLoader workers per process
    shuffle_buffer: int = 256
    val_split: str = "val"
    val_images: int = 16  # fixed validation batch for image grids and hole PSNR; 0 = none
    val_shards: str = ""  # shard directory of the validation images; empty: `shards`
    # shards and val_shards may be URLs: https://, http://, s3://, gs:// (docs/remote_shards.md)
    remote_timeout_s: float = 300.0  # a remote read's longest time without a byte, retries included
    on_bad_shard: str = "fail"  # a remote shard whose sha256 is not the manifest's: fail | skip
    cache_dir: str = ""  # local directory keeping verified remote shards for later epochs
    cache_max_gb: float = 50.0  # the cache's bound: least recently used shards go first


@dataclass(frozen=True)
class MaskConfig:
    kind: str = "rect"  # center | rect | multi_rect | brush
    hole_min_px: int = 16  # side range of a rectangular hole
    hole_max_px: int = 32
    local_px: int = 32  # side of the local area that holds the hole (GLCIC local D input)
    max_holes: int = 3  # multi_rect: up to this many holes
    brush: str = "medium"  # brush preset: thin | medium | thick
    # centred: the local area centred on the hole, clamped at the borders (GLCIC paper) | random:
    # placed uniformly, the hole anywhere inside it
    local_placement: str = "centred"


@dataclass(frozen=True)
class ModelConfig:
    family: str = "glcic"  # a registered family: `ganpaint models --list`
    width: int = 64  # generator base channels (papers: 64)
    disc_width: int = 64  # discriminator base channels (papers: 64)
    # The net's input in the hole: mean (the dataset's mean colour, GLCIC) | zero | pyramid |
    # harmonic | biharmonic | tension (smooth fills from the pixels around the hole)
    hole_fill: str = "mean"
    # Solver iterations of the smooth fill (harmonic sweeps, biharmonic and tension
    # conjugate-gradient steps); 0: the solver's default, converged at the image size. Fewer trade
    # exactness for speed.
    fill_iterations: int = 0
    # The tension fill's tension in [0, 1]: 0 the biharmonic (thin-plate), 1 the harmonic
    # (membrane) fill
    fill_tension: float = 0.2
    residual: bool = (
        False  # the generator adds a correction to its filled input (models/residual.py)
    )


@dataclass(frozen=True)
class OptimConfig:
    generator: str = "adadelta"  # adadelta | adam
    discriminator: str = "adadelta"
    generator_lr: float = 1.0
    discriminator_lr: float = 1.0
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 0.0
    grad_accum_steps: int = 1
    # none: constant rates (the papers) | cosine: both rates fall from their value to 0 over the
    # run (schedule.total_steps), a function of the step alone, so a resume continues it exactly
    lr_decay: str = "none"


@dataclass(frozen=True)
class ScheduleConfig:
    # The lengths of a completion phase (the generator alone on the reconstruction loss; GLCIC's
    # Tc) and a discriminator phase (the discriminators alone, generator frozen; GLCIC's Td), for
    # the families whose phases read them (ganpaint/models/family.py, PhasePlan.length)
    completion_steps: int = 100
    discriminator_steps: int = 20
    total_steps: int = 300  # GLCIC T: end of the joint phase (all families)
    # the generator alone on the reconstruction loss for the whole run, no discriminator or critic
    # updates (the WGAN U-Net write-up's "L2 only" ablation)
    reconstruction_only: bool = False


@dataclass(frozen=True)
class LossConfig:
    reconstruction_weight: float = 1.0  # lambda_rec
    adversarial_weight: float = 4e-4  # GLCIC alpha / Context Encoder lambda_adv
    label_smoothing: float = 0.0  # one-sided: real targets become 1 - smoothing
    clamp: float = (
        0.0  # wgan critic weight clamp; 0 = seed rule (0.03 if critic_steps > 1 else 0.05)
    )
    # Context Encoders: the reconstruction loss also covers a band overlap_px wide around the hole
    # (the context the net predicts as well), weighted overlap_weight times; 0 = the hole only
    overlap_px: int = 0
    overlap_weight: float = 10.0


@dataclass(frozen=True)
class LogConfig:
    every_steps: int = 10  # scalars to TensorBoard, stats.jsonl and the console
    image_every_steps: int = 100  # image grid of the fixed validation batch
    progress: str = "auto"  # auto (rich on a terminal, plain lines otherwise) | rich | plain | none
    # experiment trackers: tensorboard (RUN/tb, with image grids) and any of accelerate's others
    # (wandb, mlflow, comet_ml, aim, clearml, dvclive), each installed separately
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 100  # also saved at every phase boundary and at the end
    keep: int = 3  # newest checkpoints kept


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


SECTION_TYPES = {
    "run": RunConfig,
    "data": DataConfig,
    "masks": MaskConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "loss": LossConfig,
    "log": LogConfig,
    "checkpoint": CheckpointConfig,
}

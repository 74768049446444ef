"""`subbench build`: train a model (--model) or package trained ones (--from) into the upload zip."""

from pathlib import Path

import click

from subbench.builder.cell_preprocessing import NO_PREPROCESS, PREPROCESSORS, CellPreprocessing
from subbench.builder.custom_cnn import BLOCKS
from subbench.builder.heads import HEADS
from subbench.builder.input_branches import INPUT_BRANCHES, NO_BRANCHES, InputBranches
from subbench.builder.losses import LOSSES
from subbench.builder.optim import OPTIMIZERS, SCHEDULES
from subbench.builder.pipeline import AUGMENT_PRESETS
from subbench.builder.recipe import shipped_recipes
from subbench.builder.train import BALANCE_MODES, STRATEGIES
from subbench.builder.tta_select import TTA_CHOICES
from ..errors import SubbenchError
from . import main, profile_option


class BuildUsageError(SubbenchError):
    """build was called with a contradictory or incomplete set of options."""


def _weights(text):
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter("give comma-separated numbers, e.g. 0.6,0.4") from None


def _input_branches(ctx, param, text):
    return None if text is None else InputBranches.from_names(text)   # InputBranchError names a wrong one


def _preprocess(ctx, param, text):
    return None if text is None else CellPreprocessing.from_spec(text)   # PreprocessError names a wrong one


# Training options: each maps onto the recipe field of the same name (None = keep the recipe's value). The
# choices are the registries of the modules that implement them.
TRAINING_OPTIONS = [
    click.option("--weights", default=None, metavar="imagenet|none|PATH", help="Backbone start weights."),
    click.option("--input-size", type=int, default=None, help="Resize inside the model (backbones wanting more px)."),
    click.option("--width", type=int, default=None,
                 help="custom_cnn: channels of the first stage (stages W, 2W, 4W, 8W; default 32)."),
    click.option("--block", type=click.Choice(list(BLOCKS)), default=None,
                 help="custom_cnn: the stages' blocks, basic (ResNet's) or inverted (MobileNetV2's inverted "
                      "residual: fewer multiply-adds a block)."),
    click.option("--whiten-stem/--no-whiten-stem", default=None,
                 help="custom_cnn: start the first conv as a whitening of the training images' patches."),
    click.option("--inputs", default=None, metavar=",".join(INPUT_BRANCHES) + "|" + NO_BRANCHES,
                 callback=_input_branches,
                 help="custom_cnn: input branches, more channels computed inside the model; "
                      + "; ".join(f"{b.name}: {b.help}" for b in INPUT_BRANCHES.values()) + "."),
    click.option("--colour-dropout", type=float, default=None, metavar="SHARE",
                 help="custom_cnn with --inputs: zero the colour channels of this share of the training images, "
                      "so that the model learns to use its input branches (0: off)."),
    click.option("--preprocess", default=None, metavar=",".join(PREPROCESSORS) + "|" + NO_PREPROCESS,
                 callback=_preprocess,
                 help="Cell preprocessing inside the model, on the raw image, in the order given; "
                      + "; ".join(f"{p.name}: {p.help}" for p in PREPROCESSORS.values()) + "."),
    click.option("--head", type=click.Choice(list(HEADS)), default=None, help="Classification head."),
    click.option("--loss", type=click.Choice(list(LOSSES)), default=None),
    click.option("--label-smoothing", type=float, default=None),
    click.option("--optimizer", type=click.Choice(list(OPTIMIZERS)), default=None),
    click.option("--lr", "learning_rate", type=float, default=None, help="Initial learning rate."),
    click.option("--weight-decay", type=float, default=None,
                 help="Decoupled weight decay: Keras applies w -= lr * wd * w each step (not to biases or norms)."),
    click.option("--lookahead", type=float, default=None, metavar="MOMENTUM",
                 help="Average the weights (this momentum a step) and write the average back every 5 steps "
                      "(Lookahead, e.g. 0.95; 0: off)."),
    click.option("--schedule", type=click.Choice(list(SCHEDULES)), default=None),
    click.option("--epochs", type=int, default=None),
    click.option("--batch-size", type=int, default=None),
    click.option("--patience", type=int, default=None, help="Early-stopping patience (epochs)."),
    click.option("--augment", type=click.Choice(list(AUGMENT_PRESETS)), default=None),
    click.option("--heavy-bank", type=int, default=None, metavar="K",
                 help="heavy: draw from K corrupted copies computed once (CPU speed); 0 = corrupt every batch."),
    click.option("--balance", type=click.Choice(list(BALANCE_MODES)), default=None),
    click.option("--holdout", type=float, default=None, help="Held-out fraction (stratified)."),
    click.option("--seed", type=int, default=None),
    click.option("--val-corrupt", default=None, metavar="PRESET|none",
                 help="Corrupt the validation set once (default an2dl) for early stopping."),
    click.option("--finetune-phases", type=int, default=None, help="Gradual-unfreezing micro-phases."),
    click.option("--finetune-epochs", type=int, default=None),
    click.option("--kfold", type=int, default=None, help="Estimate the epoch count by K-fold CV."),
    click.option("--final", is_flag=True, default=None, help="After --kfold, fit on all data."),
    click.option("--mixed-precision", is_flag=True, default=None, help="float16 on a GPU, bfloat16 on a CPU with AMX (~2x on custom_cnn; AVX-512 BF16 alone is slower than float32), else float32; exports float32."),
    click.option("--strategy", type=click.Choice(list(STRATEGIES)), default=None),
    click.option("--limit", type=int, default=None, help="Train on this many images only (smoke runs)."),
    click.option("--max-train-minutes", type=float, default=None,
                 help="Stop training after this long, keeping the best weights so far."),
    click.option("--autosize-epochs", type=int, default=None, metavar="N",
                 help="custom_cnn with --max-train-minutes: time a step of each model size first and train the "
                      "largest that fits N epochs in the budget (0: off; --input-size/--width set it off)."),
    click.option("--progressive", type=float, default=None, metavar="SHARE",
                 help="From scratch with --max-train-minutes: train the first SHARE of the budget at 3/4 of the "
                      "input size, then at the full size (progressive resizing; 0: off)."),
    click.option("--time-budget", "time_budget_s", type=float, default=None,
                 help="Seconds allowed on the server, for --tta auto (default: the profile's limit)."),
]


def training_options(f):
    for option in reversed(TRAINING_OPTIONS):
        f = option(f)
    return f


@main.command()
@click.option("--model", "backbone", default=None, metavar="NAME",
              help="Train this backbone (e.g. convnext_base, efficientnetv2_b0, custom_cnn).")
@click.option("--recipe", default=None, metavar="NAME|FILE.toml",
              help=f"All training options from a recipe (shipped: {', '.join(shipped_recipes())}); flags "
                   "override it.")
@click.option("--data", "data_path", type=click.Path(path_type=Path), default=None,
              help="Training data: an AN2DL-style npz or a <class>/<image> folder.")
@click.option("--split", "split_path", type=click.Path(path_type=Path), default=None,
              help="Use this split.json (from `subbench data split`) instead of making one.")
@click.option("--from", "from_models", multiple=True, type=click.Path(path_type=Path), metavar="M.keras",
              help="Package an already trained Keras model instead; repeat for an ensemble.")
@click.option("--tta", type=click.Choice(list(TTA_CHOICES)), default=None,
              help="Test-time augmentation views merged by mean of probabilities (auto: measured, --model only).")
@click.option("--ensemble-weights", default=None, metavar="W1,W2,...",
              help="Weight of each --from model in the average (default equal).")
@training_options
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The zip to write.")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Checkpoints and logs (default: the zip's name with .build).")
@click.option("--resume", is_flag=True, help="Continue an interrupted --model build from its build folder.")
@click.option("--cpu-devices", type=int, default=None,
              help="Split the CPU into N logical devices (try --strategy mirrored without GPUs).")
@click.option("--force", is_flag=True, help="Overwrite the output (and restart the build folder).")
@click.option("--env", "env", type=click.Choice(["local", "server"]), default="local", show_default=True,
              help="server: after building, prove the zip loads and predicts the same in the server environment.")
@profile_option
def build(backbone, recipe, data_path, split_path, from_models, tta, ensemble_weights, output, build_dir, resume,
          cpu_devices, force, env, profile, **training):
    """Write a Codabench submission zip: train with --model/--recipe, or package --from models."""
    from ..api import check as run_check
    from ..api import package, train

    if from_models and (backbone or recipe):
        raise BuildUsageError("--from packages trained models; --model/--recipe trains one", "use one or the other")
    if from_models:
        if tta == "auto":
            raise BuildUsageError("--tta auto needs a validation split", "use it with --model, or pick none|flips|d4")
        package(list(from_models), output, tta=tta or "none", ensemble_weights=_weights(ensemble_weights),
                profile=profile, batch_size=training.get("batch_size") or 64, force=force, echo=click.echo)
    elif backbone or recipe:
        if data_path is None:
            raise BuildUsageError("training needs data", "give --data training_set.npz (or an image folder)")
        overrides = {k: v for k, v in dict(training, backbone=backbone, tta=tta).items() if v is not None}
        train(recipe, data_path, output, profile, build_dir=build_dir, split=split_path, resume=resume,
              force=force, cpu_devices=cpu_devices, echo=click.echo, **overrides)
    else:
        raise BuildUsageError("nothing to build",
                              "give --model NAME --data DATA to train, or --from MODEL.keras to package")
    if env == "server":
        from .check import print_report

        report = run_check(output, env="server", profile=profile)
        print_report(report)
        if not report.ok:
            raise SystemExit(1)

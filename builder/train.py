"""Training: phases, callbacks, checkpoints and resume, on any tf.distribute strategy.

Phase 1 trains the head with the backbone frozen (or the whole network when it starts from random weights);
then `finetune_phases` micro-phases unfreeze the backbone from the top, the learning rate decayed between
them, BatchNorm kept frozen (as the 'Overfitting Gods' and 'ANNamo' team reports did). Every epoch is checkpointed by Keras' BackupAndRestore, and
`state.json` in the build folder records finished phases, so a killed build resumes where it stopped, losing
at most the epoch in progress.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from subbench.atomic import write_text_atomic
from subbench.builder.autosize import lowres_size
from subbench.builder.pipeline import bank_copies, heavy_bank, make_dataset
from subbench.errors import SubbenchError

if TYPE_CHECKING:   # recipe.py reads this module's registries
    from subbench.builder.recipe import Recipe

STATE = "state.json"
# --balance: none | oversample (oversample_index) | weights (subbench.builder.losses.class_weights)
BALANCE_MODES = ("none", "oversample", "weights")
# --strategy (make_strategy)
STRATEGIES = ("auto", "mirrored", "multiworker", "none")


class TrainingError(SubbenchError):
    """Training cannot start or continue as asked."""


@dataclass
class Phase:
    name: str
    epochs: int
    learning_rate: float
    unfreeze: float          # fraction of backbone layers trainable (BatchNorm excluded)
    early_stopping: bool = True
    # progressive resizing (recipe `progressive`): the first part trains a copy of the model built at a lower
    # input size until this share of the time budget and ends with its last weights; the next phase `continues`
    # it: its weights, its optimizer state and its cosine go on at the full size
    lowres_until: float | None = None
    continues: bool = False


@dataclass
class TrainResult:
    built: object                      # subbench.builder.models.BuiltModel, best weights loaded
    history: list[dict] = field(default_factory=list)   # one row per epoch: phase, epoch, metrics, lr, seconds
    best_epochs: dict = field(default_factory=dict)     # phase -> best epoch (1-based)
    val_accuracy: float | None = None
    compute_policy: str = "float32"                     # the Keras dtype policy it trained under
    model_size: dict | None = None                      # autosize's choice and its measurements, when it chose


def plan_phases(recipe: Recipe, epochs: int | None = None, early_stopping: bool = True) -> list[Phase]:
    from_scratch = recipe.weights == "none"
    phases = [Phase("phase1", epochs or recipe.epochs, recipe.learning_rate, 1.0 if from_scratch else 0.0,
                    early_stopping)]
    if progressive_applies(recipe):
        phases = [Phase("phase1_lowres", epochs or recipe.epochs, recipe.learning_rate, 1.0, False,
                        lowres_until=recipe.progressive),
                  Phase("phase1", epochs or recipe.epochs, recipe.learning_rate, 1.0, early_stopping, continues=True)]
    if not from_scratch:
        for i in range(1, recipe.finetune_phases + 1):
            phases.append(Phase(f"finetune{i}", recipe.finetune_epochs,
                                recipe.learning_rate * recipe.finetune_lr_decay ** i,
                                recipe.unfreeze_to * i / recipe.finetune_phases, early_stopping))
    return phases


def recipe_head(recipe: Recipe):
    """The recipe's [head] table as the HeadConfig build_model takes."""
    from subbench.builder.heads import HeadConfig

    return HeadConfig(kind=recipe.head, dense_units=tuple(recipe.head_dense), batchnorm=recipe.head_batchnorm,
                      dropout=recipe.head_dropout, l2=recipe.head_l2)


def lowres_stop(deadline: float, share: float, budget_minutes: float) -> float:
    """When progressive resizing's small part ends: the last (1 - share) of the whole budget (bank and size probes
    included) is the full size's."""
    return deadline - (1.0 - share) * budget_minutes * 60


def progressive_applies(recipe: Recipe) -> bool:
    """Progressive resizing is for a model trained from scratch against a time budget (its share is of the time)."""
    return bool(recipe.progressive) and recipe.weights == "none" and bool(recipe.max_train_minutes)


def make_strategy(name: str, cpu_devices: int | None = None):
    """auto: MirroredStrategy over local GPUs when there are several, else the default strategy."""
    import os

    import tensorflow as tf

    if cpu_devices and cpu_devices > 1:
        # Split the CPU into logical devices (test distribution without GPUs); must precede any TF op.
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
        except RuntimeError:
            pass  # already initialised in this process with the same layout
    gpus = tf.config.list_logical_devices("GPU")
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise TrainingError("--strategy multiworker needs TF_CONFIG describing the cluster",
                                "set TF_CONFIG on every worker (see tf.distribute.MultiWorkerMirroredStrategy)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name not in STRATEGIES:
        raise TrainingError(f"unknown strategy {name!r}", "use one of: " + ", ".join(STRATEGIES))
    return tf.distribute.get_strategy()


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.float32)[labels]


def oversample_index(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices repeating minority classes up to the majority count (--balance oversample)."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    out = []
    for c in np.flatnonzero(counts):
        idx = np.flatnonzero(labels == c)
        out.append(np.concatenate([idx, rng.choice(idx, counts.max() - len(idx), replace=True)]))
    return np.sort(np.concatenate(out))


def _time_budget(deadline: float):
    """Keras callback: stop fit after the batch that passes `deadline` (time.monotonic()); Keras still
    validates that last, shortened epoch and checkpoints it."""
    import keras

    class TimeBudget(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.monotonic() >= deadline:
                self.model.stop_training = True

    return TimeBudget()


class _EpochLog:
    """Keras callback factory: append one JSON row per epoch to log.jsonl and keep phase state current."""

    @staticmethod
    def make(build_dir: Path, phase: str, state: dict):
        import keras

        class EpochLog(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                row = {"phase": phase, "epoch": epoch + 1, "seconds": round(time.perf_counter() - self.t0, 2),
                       "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
                       **{k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}}
                with open(build_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                best = state["phases"].setdefault(phase, {})
                val = row.get("val_accuracy")
                if val is not None and val > best.get("best_val_accuracy", -1):
                    best.update(best_val_accuracy=val, best_epoch=epoch + 1)
                write_text_atomic(build_dir / STATE, json.dumps(state, indent=1), force=True)

        return EpochLog()


JAX_LR_EVERY = 16   # steps between learning-rate updates of the time cosine on Keras' JAX backend


def _time_cosine(initial_lr: float, start: float, deadline: float):
    """Keras callback: cosine decay over wall-clock time, from `start` to `deadline` (time.monotonic()).

    With --max-train-minutes the number of epochs that fit is unknown in advance, so a cosine over steps would
    be cut off with the learning rate still high; this one reaches zero exactly when the time is up.
    """
    import math

    import keras

    class TimeCosine(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            sync = getattr(self.model, "jax_state_sync", None)
            if sync is not None:   # Keras on JAX holds the optimizer's state outside its variables during fit:
                if batch % JAX_LR_EVERY:   # bring it back to set the rate, now and then: a sync of custom_cnn's
                    return                 # 150 variables takes ~1 ms, a tenth of its step on an H200
                sync()
            frac = min(1.0, (time.monotonic() - start) / max(deadline - start, 1e-9))
            self.model.optimizer.learning_rate.assign(initial_lr * 0.5 * (1 + math.cos(math.pi * frac)))

    return TimeCosine()


LOOKAHEAD_EVERY = 5   # steps between write-backs of the weights' average (airbench's period)
LOOKAHEAD_POWER = 3   # the decay grows as (share of training done) ** 3: move fast early, average strongly late


def _lookahead(decay: float, progress):
    """Keras callback: Lookahead as airbench does it ("94% on CIFAR-10 in 3.29 seconds", K. Jordan 2024). Every
    LOOKAHEAD_EVERY steps, an average of the model's weights (BatchNorm's statistics too) moves towards the
    current ones, `rho = (decay ** LOOKAHEAD_EVERY) * progress() ** LOOKAHEAD_POWER` of the way back, and is
    written into the model: `average = rho * average + (1 - rho) * weights; weights = average`. `progress()`
    is the share of training done (0..1). One graph call for all variables (eager assigns cost ~70 ops)."""
    import keras
    import tensorflow as tf

    class Lookahead(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.vars = [v for v in self.model.weights if v.dtype == "float32"]
            self.average = [tf.Variable(v.value, trainable=False) for v in self.vars]
            self.count = 0

            @tf.function
            def update(rho):
                for v, a in zip(self.vars, self.average):
                    a.assign(rho * a + (1.0 - rho) * v.value)
                    v.assign(a)
            self.update = update

        def on_train_batch_end(self, batch, logs=None):
            self.count += 1
            if self.count % LOOKAHEAD_EVERY == 0:
                rho = decay ** LOOKAHEAD_EVERY * min(max(progress(), 0.0), 1.0) ** LOOKAHEAD_POWER
                self.update(tf.constant(rho, tf.float32))

    return Lookahead()


def _compile_plain(model, recipe: Recipe, learning_rate=None, metrics=None) -> None:
    """Compile `model` with the recipe's optimizer and loss; learning_rate a float or schedule (default the
    recipe's initial rate: probes, benchmarks). XLA ("auto") measured ~2x slower per step on CPU
    (bench/bench_custom_cnn.py); kept for GPUs. On Keras' JAX or torch backend (bench/bench_gpu_recipe.py),
    the backend's own choice ("auto")."""
    import keras

    from subbench.builder.losses import make_loss
    from subbench.builder.optim import make_optimizer

    opt = make_optimizer(recipe.optimizer, recipe.learning_rate if learning_rate is None else learning_rate,
                         weight_decay=recipe.weight_decay)
    loss = make_loss(recipe.loss, label_smoothing=recipe.label_smoothing, gamma=recipe.focal_gamma,
                     alpha=recipe.focal_alpha)
    jit = "auto"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        jit = "auto" if tf.config.list_physical_devices("GPU") else False
    model.compile(optimizer=opt, loss=loss, metrics=metrics, jit_compile=jit)


def _compile(built, recipe: Recipe, lr: float, steps: int, epochs: int, step_cosine: bool = True):
    from subbench.builder.optim import make_schedule

    cosine = recipe.schedule == "cosine" and step_cosine
    schedule = make_schedule("cosine", lr, steps * epochs) if cosine else lr
    _compile_plain(built.model, recipe, schedule, metrics=["accuracy"])


def train(recipe: Recipe, images: np.ndarray, labels: np.ndarray, val_images: np.ndarray | None,
          val_labels: np.ndarray | None, *, num_classes: int, build_dir: Path, resume: bool = False,
          epochs: int | None = None, cpu_devices: int | None = None, progress: bool = True,
          echo=print) -> TrainResult:
    """Fit a model for `recipe` on (images, labels); validate on (val_images, val_labels) when given."""
    import keras

    from subbench.builder.models import build_model

    state = _open_state(build_dir, recipe, resume)
    policy = _set_precision(recipe, echo)
    try:
        strategy = make_strategy(recipe.strategy, cpu_devices)
        echo(f"strategy: {type(strategy).__name__}, {strategy.num_replicas_in_sync} replicas")
        keras.utils.set_random_seed(recipe.seed)
        head = recipe_head(recipe)
        # The training time budget starts before the sizes are timed and the heavy bank is computed: both are
        # part of training.
        deadline = time.monotonic() + recipe.max_train_minutes * 60 if recipe.max_train_minutes else None
        # The heavy bank first: its real time, not an estimate, is then out of what the size probe sees left
        # (a 32-image estimate ranged 181-701 s for a bank that took 146-158 s, and once left no epochs at all).
        datasets = _datasets(recipe, images, labels, val_images, val_labels, num_classes, progress, echo)
        size, width = _model_size(recipe, state, images, labels, val_images, num_classes, head, deadline, echo)
        def build(input_size):
            return build_model(recipe.backbone, num_classes=num_classes, input_shape=images.shape[1:],
                               input_size=input_size, weights=recipe.weights, head=head, width=width,
                               **model_options(recipe))

        with strategy.scope():
            built = build(size)
            lowres = None
            if progressive_applies(recipe):
                low = lowres_size(size or images.shape[1])
                echo(f"progressive resizing: input {low} px for the first {recipe.progressive:.0%} of the time "
                     f"budget, then {size or images.shape[1]} px")
                lowres = build(low)
            if recipe.whiten_stem and not state["phases"]:   # a resumed build restores its weights
                from subbench.builder.custom_cnn import whiten_stem

                first = lowres or built
                echo(f"stem: whitening of the training patches, {whiten_stem(first, images, seed=recipe.seed)} "
                     "directions and their negatives")
        run = _Run(recipe, built, strategy, *datasets, build_dir, state, deadline, progress, echo, lowres=lowres)
        for phase in plan_phases(recipe, epochs, early_stopping=run.val_ds is not None):
            _run_phase(run, phase)
        history = []
        if (build_dir / "log.jsonl").exists():
            history = [json.loads(line) for line in (build_dir / "log.jsonl").read_text().splitlines() if line]
        best_epochs = {p: v.get("best_epoch") for p, v in state["phases"].items()}
        val_acc = None
        if run.val_ds is not None:
            val_acc = float(built.model.evaluate(run.val_ds, verbose=0, return_dict=True)["accuracy"])
        return TrainResult(built, history, best_epochs, val_acc, policy, state.get("autosize"))
    finally:
        if policy != "float32":
            keras.mixed_precision.set_global_policy("float32")


def model_options(recipe: Recipe) -> dict:
    """build_model's arguments that the recipe gives as they are (the size, width, head and weights are the
    caller's: autosize and progressive resizing pick them)."""
    return {"seed": recipe.seed, "inputs": recipe.inputs, "block": recipe.block,
            "colour_dropout": recipe.colour_dropout, "preprocess": recipe.preprocess}


def _set_precision(recipe: Recipe, echo) -> str:
    """Keras' global dtype policy for this build (float32 unless the recipe asks for mixed precision and the
    host gains by it); returns its name."""
    if not recipe.mixed_precision:
        return "float32"
    import keras

    from subbench.builder.precision import mixed_precision_policy

    policy, why = mixed_precision_policy()
    echo(f"mixed precision: {why}")
    keras.mixed_precision.set_global_policy(policy)
    return policy


def _model_size(recipe: Recipe, state: dict, images, labels, val_images, num_classes: int, head, deadline, echo):
    """(input size, width) to build: the recipe's, or with autosize_epochs those subbench.builder.autosize picks
    by timing a step of each candidate on this host (kept in state.json: a resumed build keeps its size)."""
    from subbench.builder.autosize import candidates_for, choose_size
    from subbench.builder.models import build_model

    if not recipe.autosize_epochs or deadline is None or recipe.backbone != "custom_cnn":
        if recipe.autosize_epochs:
            echo("model size: as the recipe gives it (autosize needs custom_cnn and max_train_minutes)")
        return recipe.input_size, recipe.width
    if "autosize" in state:
        chosen = state["autosize"]
        echo(f"model size: {chosen['input_size']} px, width {chosen['width']}, as chosen when this build started")
        return chosen["input_size"], chosen["width"]
    n_val = 0 if val_images is None else len(val_images)
    steps = -(-len(images) // recipe.batch_size)
    pick = np.random.default_rng(recipe.seed).choice(len(images), min(recipe.batch_size, len(images)), replace=False)
    batch = images[pick], one_hot(labels[pick], num_classes)

    def build_probe(size, width):
        model = build_model(recipe.backbone, num_classes=num_classes, input_shape=images.shape[1:], input_size=size,
                            head=head, width=width, **model_options(recipe)).model
        _compile_plain(model, recipe)
        return model

    echo(f"model size: timing a training step of each size (target: {recipe.autosize_epochs} epochs in the "
         f"{max(deadline - time.monotonic(), 0) / 60:.1f} minutes left of the {recipe.max_train_minutes:g}-minute "
         "budget)")
    choice = choose_size(build_probe, batch=batch, steps_per_epoch=steps, val_images=n_val,
                         seconds_left=lambda: deadline - time.monotonic(),
                         target_epochs=recipe.autosize_epochs, candidates=candidates_for(recipe.block),
                         progressive=recipe.progressive if progressive_applies(recipe) else 0.0, echo=echo)
    echo(f"model size: {choice.input_size} px, width {choice.width}: {choice.reason}")
    import keras

    keras.backend.clear_session()   # the probes' models and graphs
    state["autosize"] = choice.to_dict()
    return choice.input_size, choice.width


def _open_state(build_dir: Path, recipe: Recipe, resume: bool) -> dict:
    """The build folder's state: read back for --resume (same options only), else new (and old logs removed)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    state_path = build_dir / STATE
    if resume and state_path.exists():
        state = json.loads(state_path.read_text())
        state["recipe"] = _current_form(state["recipe"])
        if state["recipe"] != recipe.to_dict():
            changed = sorted(k for k, v in recipe.to_dict().items() if state["recipe"].get(k) != v)
            raise TrainingError(f"--resume with other options than the interrupted build ({', '.join(changed)})",
                                "repeat the original command with --resume, or pass --force to start over")
        return state
    for stale in ("log.jsonl", "log.csv"):
        (build_dir / stale).unlink(missing_ok=True)
    return {"recipe": recipe.to_dict(), "phases": {}, "done": []}


def _current_form(stored: dict) -> dict:
    """A recipe from state.json as Recipe.to_dict() writes it now, so that a build of an older version resumes:
    the options added since (e.g. preprocess, block, colour_dropout) at their defaults, which is what that build
    trained with, and `inputs` from the boolean per input branch that builds before it stored."""
    from subbench.builder.recipe import LEGACY_INPUT_KEYS, Recipe

    added = {k: v for k, v in Recipe().to_dict().items() if k not in stored and k != "inputs"}
    stored = {**stored, **added}
    if "inputs" in stored:
        return stored
    current = {k: v for k, v in stored.items() if k not in LEGACY_INPUT_KEYS}
    current["inputs"] = [name for key, name in LEGACY_INPUT_KEYS.items() if stored.get(key)]
    return current


def _datasets(recipe: Recipe, images, labels, val_images, val_labels, num_classes: int, progress: bool, echo):
    """(training dataset, validation dataset or None, class weights or None, batches a pass) as the recipe's
    augment, heavy_bank and balance say."""
    from subbench.builder.losses import class_weights

    index = oversample_index(labels, recipe.seed) if recipe.balance == "oversample" else None
    cw = class_weights(labels, num_classes) if recipe.balance == "weights" else None
    bank = None
    if recipe.augment == "heavy" and recipe.heavy_bank > 0:
        t0 = time.monotonic()
        copies = bank_copies(images, recipe.heavy_bank)
        if copies < recipe.heavy_bank:
            echo(f"heavy augmentation: {copies} corrupted copies instead of {recipe.heavy_bank}: more would take "
                 f"over a third of the memory available ({images.nbytes / 2**20:.0f} MB a copy)")
        bank = heavy_bank(images, copies, recipe.seed, progress=progress)
        echo(f"heavy augmentation: {copies} corrupted copies of the training set computed in "
             f"{time.monotonic() - t0:.0f} s")
    train_ds = make_dataset(images, one_hot(labels, num_classes), batch_size=recipe.batch_size,
                            augment=recipe.augment, seed=recipe.seed, index=index, bank=bank)
    val_ds = None
    if val_images is not None and len(val_images):
        val_ds = make_dataset(val_images, one_hot(val_labels, num_classes), batch_size=recipe.batch_size,
                              shuffle=False)
    steps = int(train_ds.cardinality())   # batches a pass: the epoch of the repeated dataset fit() runs on
    return train_ds, val_ds, cw, steps


@dataclass
class _Run:
    """What every phase of one train() call shares."""
    recipe: Recipe
    built: object
    strategy: object
    train_ds: object
    val_ds: object
    class_weight: dict | None
    steps: int
    build_dir: Path
    state: dict
    deadline: float | None    # time.monotonic() when the training time budget is spent
    progress: bool
    echo: object
    lowres: object = None     # progressive resizing: the model at the lower input size (same layers and weights)
    cosine_start: float | None = None   # when the time cosine started (progressive resizing's two parts share one)
    previous: object = None   # the BuiltModel the last phase trained

    @property
    def monitor(self) -> str:
        return "val_accuracy" if self.val_ds is not None else "accuracy"


def _run_phase(run: _Run, phase: Phase) -> None:
    """Train one phase (or restore it, done in an earlier run); its best weights end up loaded and saved."""
    from subbench.builder.models import set_backbone_trainable

    built = run.lowres if phase.lowres_until is not None else run.built
    state, echo = run.state, run.echo
    previous, run.previous = run.previous, built
    best_path = run.build_dir / f"{phase.name}.best.weights.h5"
    if phase.continues and previous is not None:
        _take_over_weights(built.model, previous.model)
    if phase.name in state["done"]:
        if best_path.exists():
            built.model.load_weights(best_path)
        echo(f"{phase.name}: done in an earlier run, weights restored")
        return
    set_backbone_trainable(built, phase.unfreeze)
    time_cosine = run.recipe.schedule == "cosine" and run.deadline is not None
    with run.strategy.scope():
        _compile(built, run.recipe, phase.learning_rate, run.steps, phase.epochs, step_cosine=not time_cosine)
        if phase.continues and previous is not None and previous.model.optimizer is not None:
            _take_over_optimizer(built.model, previous.model.optimizer)
    echo(f"{phase.name}: {phase.epochs} epochs, lr {phase.learning_rate:g}, "
         f"backbone {phase.unfreeze:.0%} trainable, input {built.input_size} px")
    stop = run.deadline
    if phase.lowres_until is not None and run.deadline is not None:
        stop = lowres_stop(run.deadline, phase.lowres_until, run.recipe.max_train_minutes)
    if stop is not None and time.monotonic() >= stop:
        echo(f"{phase.name}: skipped, the training time budget is spent")
        state["done"].append(phase.name)
        return
    # One iterator for the whole phase (a repeated dataset with steps_per_epoch: Keras keeps the iterator
    # across epochs). Why: Keras otherwise drops each epoch's iterator, and tearing down a pipeline with
    # a numpy_function stage blocked the main thread 7-52 s at 0% CPU (py-spy: ~IteratorResource waiting
    # on a tf.data thread), 137 s of 17 minutes in the cpu recipe's benchmark. Each pass over the data
    # still reshuffles and redraws its augmentation keys (rerandomize_each_iteration).
    built.model.fit(run.train_ds.repeat(), steps_per_epoch=run.steps, validation_data=run.val_ds,
                    epochs=phase.epochs, callbacks=_callbacks(run, phase, best_path, time_cosine, stop),
                    class_weight=run.class_weight, verbose=0, shuffle=False)  # the tf.data pipeline shuffles
    if phase.lowres_until is not None:   # the next phase continues from where this one ended, not its best
        built.model.save_weights(best_path, overwrite=True)
    elif best_path.exists():
        built.model.load_weights(best_path)
    else:  # no validation improvement recorded (e.g. no validation set): keep the last weights
        built.model.save_weights(best_path)
    state["done"].append(phase.name)
    write_text_atomic(run.build_dir / STATE, json.dumps(state, indent=1), force=True)


def _take_over_weights(model, old) -> None:
    """Copy every weight of `old` (BatchNorm statistics too) into `model`, the same network at another input size:
    the resizing layer has no weights, so both list the same variables in the same order."""
    if [w.shape for w in model.weights] != [w.shape for w in old.weights]:
        raise TrainingError("progressive resizing: the small model's weights do not fit the full-size model",
                            "train without --progressive")
    model.set_weights(old.get_weights())


def _take_over_optimizer(model, old) -> None:
    """Build `model`'s optimizer and copy `old`'s state into it (step count, moments), variable by variable: the
    same network at another input size has the same variables in the same order."""
    new = model.optimizer
    if not old.built:    # the first part never stepped (its time was spent before it began)
        return
    new.build(model.trainable_variables)
    pairs = list(zip(new.variables, old.variables))
    if len(new.variables) != len(old.variables) or any(a.shape != b.shape for a, b in pairs):
        raise TrainingError("progressive resizing: the optimizer's state does not fit the full-size model",
                            "train without --progressive")
    for a, b in pairs:
        a.assign(b)


def _callbacks(run: _Run, phase: Phase, best_path: Path, time_cosine: bool, stop: float | None) -> list:
    """Checkpoints (every epoch, and the best), logs, early stopping, the schedule's and the time budget's
    (`stop`: when this phase ends, time.monotonic())."""
    import keras

    recipe, build_dir = run.recipe, run.build_dir
    prior = run.state["phases"].get(phase.name, {})
    callbacks = [
        keras.callbacks.BackupAndRestore(str(build_dir / "backup" / phase.name)),
        keras.callbacks.ModelCheckpoint(str(best_path), monitor=run.monitor, save_best_only=True,
                                        save_weights_only=True, mode="max",
                                        initial_value_threshold=prior.get("best_val_accuracy")),
        _EpochLog.make(build_dir, phase.name, run.state),
        keras.callbacks.CSVLogger(str(build_dir / "log.csv"), append=True),
    ]
    if phase.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=run.monitor, mode="max", patience=recipe.patience))
    if recipe.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss" if run.val_ds else "loss",
                                                           factor=0.5, patience=max(1, recipe.patience // 2)))
    if not (phase.continues and run.cosine_start is not None):
        run.cosine_start = time.monotonic()
    start = run.cosine_start
    if run.deadline is not None:
        callbacks.append(_time_budget(stop))
        if time_cosine:
            callbacks.append(_time_cosine(phase.learning_rate, start, run.deadline))
    if recipe.lookahead:   # training done: the share of the time budget, else of the phase's steps
        if run.deadline is not None:
            def progress():
                return (time.monotonic() - start) / max(run.deadline - start, 1e-9)
        else:
            optimizer, total = run.built.model.optimizer, max(1, phase.epochs * run.steps)

            def progress():
                return int(optimizer.iterations.numpy()) / total
        callbacks.append(_lookahead(recipe.lookahead, progress))
    if run.progress:
        from tqdm.keras import TqdmCallback

        callbacks.append(TqdmCallback(verbose=0, desc=phase.name))
    return callbacks


def plot_curves(history: list[dict], path: Path) -> Path | None:
    """PNG of loss and accuracy per epoch (train and validation), phases one after the other."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            ys = [row.get(key) for row in history]
            if any(y is not None for y in ys):
                ax.plot(x, [np.nan if y is None else y for y in ys], style, label=key)
        ax.set_xlabel("epoch (all phases)")
        ax.set_title(metric)
        ax.legend()
    starts = [i + 1 for i in range(1, len(history)) if history[i]["phase"] != history[i - 1]["phase"]]
    for ax in axes:
        for s in starts:
            ax.axvline(s - 0.5, color="grey", lw=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

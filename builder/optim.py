"""Optimizers (`OPTIMIZERS`) and learning-rate schedules (`SCHEDULES`) by name, all from keras.optimizers.

From the team reports the shipped recipes follow: AdamW (the 'ANNamo' and 'PoliMi Dropouts' reports), Lion
(the 'ANNamo' custom CNN, 'LionIA'), NAdam ('PoliMi Dropouts'), SGD for completeness. Decoupled weight decay
(Keras applies it as w -= lr * wd * w for every optimizer) skips biases and normalization scales and shifts by
default, the usual AdamW practice; pass exclude_from_decay=() to decay everything.
"""

from __future__ import annotations

from subbench.errors import SubbenchError

# optimizer name -> (keras.optimizers class, its defaults here)
OPTIMIZERS = {"adamw": ("AdamW", {}), "lion": ("Lion", {}), "nadam": ("Nadam", {}),
              "sgd": ("SGD", {"momentum": 0.9, "nesterov": True})}
# plateau: a constant learning rate that train() lowers with ReduceLROnPlateau; cosine: CosineDecay over the
# steps (or, with a training time budget, train()'s cosine over wall-clock time); constant: as given
SCHEDULES = ("plateau", "cosine", "constant")
NO_DECAY = ("bias", "gamma", "beta")   # variable names: Dense/Conv bias, BatchNorm/LayerNorm gamma and beta


class OptimizerConfigError(SubbenchError):
    """An optimizer or schedule option is invalid."""


def make_optimizer(name: str, learning_rate, weight_decay: float | None = None, *,
                   exclude_from_decay=NO_DECAY, **kw):
    """A keras optimizer. learning_rate: a float or a schedule (make_schedule). weight_decay None: the
    optimizer's Keras default (AdamW 0.004, the others none). SGD defaults to momentum 0.9, Nesterov.
    Extra keywords go to the Keras constructor (e.g. clipnorm, beta_1)."""
    import keras

    name = name.lower()
    if isinstance(learning_rate, (int, float)) and not learning_rate > 0:
        raise OptimizerConfigError(f"learning rate {learning_rate} must be > 0", "e.g. 1e-3 (head), 1e-5 (fine-tune)")
    if weight_decay is not None and weight_decay < 0:
        raise OptimizerConfigError(f"weight decay {weight_decay} must be >= 0", "e.g. 1e-4")
    decay = {} if weight_decay is None else {"weight_decay": weight_decay or None}
    if name not in OPTIMIZERS:
        raise OptimizerConfigError(f"unknown optimizer {name!r}", "use one of: " + ", ".join(OPTIMIZERS))
    class_name, defaults = OPTIMIZERS[name]
    opt = getattr(keras.optimizers, class_name)(learning_rate=learning_rate, **decay, **{**defaults, **kw})
    if opt.weight_decay and exclude_from_decay:
        opt.exclude_from_weight_decay(var_names=list(exclude_from_decay))
    return opt


def make_schedule(name: str, initial_lr: float, steps: int, *, alpha: float = 0.0, warmup_steps: int = 0):
    """"constant" and "plateau": the float itself (train() lowers a plateau one with ReduceLROnPlateau);
    "cosine": keras CosineDecay from initial_lr to alpha * initial_lr over `steps` optimizer steps (after
    `warmup_steps` of linear warm-up from 0, when given)."""
    import keras

    if not initial_lr > 0:
        raise OptimizerConfigError(f"learning rate {initial_lr} must be > 0", "e.g. 1e-3")
    if name in ("constant", "plateau"):
        return float(initial_lr)
    if name == "cosine":
        steps = int(steps)
        if steps < 1 or warmup_steps < 0 or warmup_steps >= steps:
            raise OptimizerConfigError(f"cosine schedule needs steps >= 1 and 0 <= warmup < steps "
                                       f"(got steps={steps}, warmup={warmup_steps})",
                                       "steps = epochs * steps per epoch")
        if warmup_steps:
            return keras.optimizers.schedules.CosineDecay(0.0, steps - warmup_steps, alpha=alpha,
                                                          warmup_target=float(initial_lr), warmup_steps=warmup_steps)
        return keras.optimizers.schedules.CosineDecay(float(initial_lr), steps, alpha=alpha)
    raise OptimizerConfigError(f"unknown schedule {name!r}", "use one of: " + ", ".join(SCHEDULES))

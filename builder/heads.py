"""Classification heads on a backbone's feature map: `HEADS` names them, `build_head` builds one.

gap: GAP -> [Dense(units, L2) -> BN? -> activation -> Dropout]* -> Dropout (if no dense) -> softmax.
inception (the 'Overfitting Gods' team report, recipe convnext-xlarge-focal): MaxPool -> parallel 1x1,
1x1->3x3, 1x1->5x5 and pool->1x1 convs -> concat, then GAP -> Dropout -> [dense as above]* -> softmax.
The softmax is float32, so the probabilities stay float32 under a mixed-precision policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from subbench.builder.backbones import ModelConfigError
from subbench.builder.custom_cnn import BN_MOMENTUM


@dataclass(frozen=True)
class HeadConfig:
    kind: str = "gap"                 # a name in HEADS
    dense_units: tuple[int, ...] = ()
    batchnorm: bool = False
    dropout: float = 0.0
    l2: float = 0.0
    activation: str = "relu"
    inception_filters: int = 128      # output channels of each inception branch
    inception_bottleneck: int = 64    # 1x1 bottleneck in front of the 3x3 and 5x5 convs


def _gap_block(x, head: HeadConfig, reg):
    return x


def _inception_block(x, head: HeadConfig, reg):
    """Max-pool on the feature map, then four parallel branches (three 1x1-bottlenecked convs and a pooling
    branch), concatenated depth-wise. Stride-1 pools keep the small maps of 96-px inputs."""
    from keras import layers

    x = layers.MaxPooling2D(3, strides=1, padding="same", name="head_pool")(x)

    def conv(t, filters, k, name):
        t = layers.Conv2D(filters, k, padding="same", use_bias=not head.batchnorm, kernel_regularizer=reg,
                          name=name)(t)
        if head.batchnorm:
            t = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(t)
        return layers.Activation(head.activation, name=f"{name}_act")(t)

    f, b = head.inception_filters, head.inception_bottleneck
    b1 = conv(conv(x, b, 1, "head_b1_reduce"), f, 1, "head_b1_1x1")
    b3 = conv(conv(x, b, 1, "head_b3_reduce"), f, 3, "head_b3_3x3")
    b5 = conv(conv(x, b, 1, "head_b5_reduce"), f, 5, "head_b5_5x5")
    bp = layers.MaxPooling2D(3, strides=1, padding="same", name="head_bp_pool")(x)
    bp = conv(bp, f, 1, "head_bp_1x1")
    return layers.Concatenate(name="head_concat")([b1, b3, b5, bp])


# head name -> the block it puts on the feature map before the global average pooling
HEADS = {"gap": _gap_block, "inception": _inception_block}


def check_head(head: HeadConfig) -> None:
    if head.kind not in HEADS:
        raise ModelConfigError(f"unknown head {head.kind!r}", "use one of: " + ", ".join(HEADS))
    if not 0.0 <= head.dropout < 1.0:
        raise ModelConfigError(f"head dropout {head.dropout} is outside [0, 1)", "use e.g. 0.2")
    if head.l2 < 0 or any(int(u) <= 0 for u in head.dense_units):
        raise ModelConfigError("head l2 must be >= 0 and dense units > 0", "e.g. dense_units=(256,), l2=1e-4")


def build_head(x, head: HeadConfig, num_classes: int):
    """The head's softmax output (float32) on the feature map `x`."""
    import keras
    from keras import layers

    check_head(head)
    reg = keras.regularizers.L2(head.l2) if head.l2 else None
    x = HEADS[head.kind](x, head, reg)
    x = layers.GlobalAveragePooling2D(name="head_gap")(x)
    if head.dropout and (head.kind == "inception" or not head.dense_units):
        x = layers.Dropout(head.dropout, name="head_dropout")(x)
    for i, units in enumerate(head.dense_units):
        x = layers.Dense(units, use_bias=not head.batchnorm, kernel_regularizer=reg, name=f"head_dense{i}")(x)
        if head.batchnorm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"head_dense{i}_bn")(x)
        x = layers.Activation(head.activation, name=f"head_dense{i}_act")(x)
        if head.dropout:
            x = layers.Dropout(head.dropout, name=f"head_dense{i}_dropout")(x)
    # float32 so the probabilities stay float32 under a mixed_float16 policy.
    return layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg, dtype="float32",
                        name="predictions")(x)

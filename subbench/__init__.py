"""subbench: score a Codabench image-classification submission on your own machine before you upload it.

    import subbench
    x, y = subbench.load_data("training_set.npz")
    zip_ = subbench.package(model, "sub.zip")                 # or subbench.train(recipe="cpu", data=..., out=...)
    subbench.check(zip_)
    subbench.score(zip_, data=(x_val, y_val), simulate_hidden="an2dl", clean_too=True)

The functions are documented in `subbench.api` (imported on first use: `import subbench` loads no TensorFlow).
`subbench.corrupt` is the simulator package, and callable as the corruption function.
"""

__version__ = "0.1.0"

_API = ("load_data", "package", "train", "check", "score", "compare", "explain", "augment_fn",
        "hidden_set_augmentation", "preprocess_layer", "preprocessing",
        "score_bundle", "bundle_inspect", "bundle_make", "compare_bundles")
_TYPES = {"Score": "subbench.local_bench.results", "Leaderboard": "subbench.local_bench.results",
          "Status": "subbench.local_bench.results", "CheckReport": "subbench.local_bench.check",
          "BuildResult": "subbench.builder.result", "SubbenchError": "subbench.errors",
          "Explanation": "subbench.local_bench.explain", "BundleScore": "subbench.local_bench.bundle_result"}

__all__ = [*_API, "corrupt", "datasets", *_TYPES]


def __getattr__(name):
    import importlib

    if name in _API:
        return getattr(importlib.import_module("subbench.api"), name)
    if name in _TYPES:
        return getattr(importlib.import_module(_TYPES[name]), name)
    if name in ("corrupt", "datasets"):
        return importlib.import_module(f"subbench.{name}")
    raise AttributeError(f"module 'subbench' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

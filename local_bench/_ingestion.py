"""Ingestion program run in a fresh process, as Codabench's ingestion program is run in its container.

Copied by the runner into the run folder as `program/ingestion.py` and started with the chosen interpreter
(`--env server` is another virtualenv that does not have subbench), so it imports nothing of subbench and only
numpy besides the standard library; it keeps Python 3.8+ syntax for the same reason.

What it does follows Codabench's example bundles (codalab/competition-examples, codabench/Mini-MNIST,
ingestion_program/run_ingestion.py): `sys.path.append(<ingested_program>)`, `from model import Model`,
`Model()`, `model.predict(X)`, predictions saved with `np.save` into the output folder. Around that it records
what the runner needs and the server does not show: the wall-clock time each stage ends (so a run killed at the
time limit still says which stages it reached), the stage an exception came from, and its own peak memory.

Files (all paths given on the command line):
  <input>/sets.json          {"sets": [{"key": "0000", "file": "0000.npy"}, ...], "stream": bool, "chunk": int|null}
  <input>/<key>.npy          uint8 images (N, H, W, C). With "stream" the list is empty: sets 0000.npy, 0001.npy...
                             appear one at a time (renamed into place by the runner, END after the last) and
                             are deleted once predicted, so disk use stays bounded
  <output>/predictions.npy   the first set's predictions, raw as returned (concatenated over chunks)
  <output>/predictions_<key>.npy  every set's predictions
  <state-dir>/progress.json  wall-clock marks, per-set progress, peak memory, loaded versions; rewritten
                             atomically after every stage and chunk
  <state-dir>/error.json     {"stage", "type", "message"} when a stage raised
"""

import argparse
import json
import os
import sys
import time
import traceback

T_SCRIPT = time.time()  # first thing: the interpreter is up and this file runs


class ShapeMismatch(Exception):
    """Chunks of one set came back with different shapes."""


class NotNumeric(Exception):
    """predict returned something numpy cannot hold as a numeric array."""


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _maxrss_mb():
    try:
        import resource

        # Linux reports KiB, macOS bytes.
        scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / (1024 * 1024)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    except Exception:  # not available on this platform
        return None


def _versions():
    # Versions of what the submission actually loaded, read from sys.modules: no extra import, no extra cost.
    out = {"python": sys.version.split()[0], "executable": sys.executable}
    for name in ("numpy", "tensorflow", "keras", "torch", "sklearn", "PIL"):
        mod = sys.modules.get(name)
        version = getattr(mod, "__version__", None) if mod is not None else None
        if version:
            out[name] = str(version)
    return out


class State:
    def __init__(self, path):
        self.path = path
        self.data = {"pid": os.getpid(), "times": {"script": T_SCRIPT}, "sets": {}, "stage": "start"}
        self.flush()

    def mark(self, key, stage=None):
        self.data["times"][key] = time.time()
        if stage:
            self.data["stage"] = stage
        self.flush()

    def flush(self):
        self.data["maxrss_mb"] = _maxrss_mb()
        self.data["versions"] = _versions()
        _write_json(self.path, self.data)


def _fail(state_dir, state, stage, exc):
    traceback.print_exc()
    sys.stderr.flush()
    _write_json(os.path.join(state_dir, "error.json"),
                {"stage": stage, "type": type(exc).__name__, "message": str(exc)[:2000]})
    state.data["stage"] = stage
    state.flush()
    # Exit code 1, like an uncaught exception in Codabench's ingestion program.
    os._exit(1)


def _specs(input_dir, sets, stream):
    """The sets to predict, in order. In stream mode the runner renames <k>.npy into place when it is ready and
    writes END after the last one; the runner's time limit covers any wait."""
    if not stream:
        for spec in sets:
            yield spec
        return
    k = 0
    while True:
        name = "%04d" % k
        path = os.path.join(input_dir, name + ".npy")
        if os.path.exists(path):
            yield {"key": name, "file": name + ".npy"}
            k += 1
        elif os.path.exists(os.path.join(input_dir, "END")):
            if not os.path.exists(path):  # END is written after the last set: look once more
                return
        else:
            time.sleep(0.02)


def _predict_chunks(model, X, chunk, state, info, state_dir):
    """model.predict's outputs on X, `chunk` images a call (all at once without a chunk), the progress kept."""
    n = len(X)
    step = int(chunk) if chunk else max(n, 1)
    parts = []
    for lo in range(0, n, step):
        try:
            out = model.predict(X[lo:lo + step])
        except BaseException as exc:
            _fail(state_dir, state, "predict", exc)
        parts.append(out)
        info["done"] = min(lo + step, n)
        if chunk:
            state.flush()
    return parts


def _stacked(parts):
    """The predictions of one set as one numeric array; NotNumeric or ShapeMismatch where they are not."""
    import numpy as np

    try:
        arrays = [np.asarray(p) for p in parts]
    except ValueError as exc:  # numpy 2 refuses ragged nested sequences
        raise NotNumeric("predict returned %s that is not a regular array (%s)"
                         % (type(parts[0]).__name__, exc))
    if len(arrays) == 1:
        pred = arrays[0]
    else:
        shapes = sorted({a.shape[1:] for a in arrays})
        if len(shapes) > 1 or any(a.ndim == 0 for a in arrays):
            raise ShapeMismatch("chunks returned arrays of different shapes: %s"
                                % [a.shape for a in arrays][:5])
        pred = np.concatenate(arrays)
    if pred.dtype == object:
        raise NotNumeric("predict returned %s of Python objects, not a numeric array"
                         % type(parts[0]).__name__)
    return pred


def _args():
    parser = argparse.ArgumentParser(description="subbench ingestion program")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--submission", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--module", default="model")
    parser.add_argument("--class-name", default="Model")
    return parser.parse_args()


def main():
    args = _args()

    state = State(os.path.join(args.state_dir, "progress.json"))
    import numpy as np

    with open(os.path.join(args.input, "sets.json")) as f:
        config = json.load(f)
    sets, stream, chunk = config["sets"], bool(config.get("stream")), config.get("chunk")
    first = None
    if not stream:
        # Like the server's ingestion program, the data is loaded before the submission is imported.
        first = np.load(os.path.join(args.input, sets[0]["file"]))
    state.mark("ready", stage="import")

    # Codabench's run_ingestion.py appends (not prepends) the submission folder to sys.path.
    sys.path.append(args.submission)
    try:
        module = __import__(args.module)
        Model = getattr(module, args.class_name)
    except BaseException as exc:  # SyntaxError, ImportError, SystemExit...: all mean the import failed
        _fail(args.state_dir, state, "import", exc)
    state.mark("imported", stage="init")

    try:
        model = Model()
    except BaseException as exc:
        _fail(args.state_dir, state, "init", exc)
    state.mark("initialized", stage="predict")

    for i, spec in enumerate(_specs(args.input, sets, stream)):
        path = os.path.join(args.input, spec["file"])
        if first is not None and i == 0:
            X = first
        else:
            X = np.load(path)
        first = None
        n = len(X)
        info = {"start": time.time(), "done": 0, "total": n}
        state.data["sets"][spec["key"]] = info
        state.flush()
        parts = _predict_chunks(model, X, chunk, state, info, args.state_dir)
        info["end"] = time.time()
        try:
            pred = _stacked(parts)
            np.save(os.path.join(args.output, "predictions_%s.npy" % spec["key"]), pred, allow_pickle=False)
            if i == 0:
                np.save(os.path.join(args.output, "predictions.npy"), pred, allow_pickle=False)
        except BaseException as exc:
            _fail(args.state_dir, state, "output", exc)
        if stream:
            os.unlink(path)
        state.flush()
    state.mark("finished", stage="done")
    sys.stdout.flush()
    sys.stderr.flush()


if __name__ == "__main__":
    main()

"""Training throughput of the `cpu` recipe's model against this CPU's measured peak: images/s and share of peak.

For the cpu recipe's model (build_model with the recipe's backbone, input size, input branches and head, compiled
by the builder's own `_compile`: the recipe's optimizer, loss with label smoothing, accuracy metric, no XLA on
CPU), prints per variant:
  - model FLOPs per image of a training step, counted analytically from the Conv2D / DepthwiseConv2D / Dense
    shapes (2 x MACs; a trainable layer costs forward + weight gradient + input gradient = 3x forward, the first
    trainable layer and anything before it no input gradient, frozen layers (the Sobel) forward only);
    BatchNorm, ReLU, Add, Resizing, pooling are not counted (memory-bound, a few % of the FLOPs but not of the time);
    the usual "3 x forward" figure beside it;
  - the host's measured peak: the best of several n x n float32 tf.matmul (all cores, or the variant's threads)
    in GFLOP/s, measured in the variant's own process (so an ONEDNN_MAX_CPU_ISA=AVX2 variant measures the AVX2
    peak) at start and again at the end; bfloat16 variants also measure a bfloat16 matmul;
  - measured training images/s: train_on_batch on an in-memory batch of random 0..255 images (no input
    pipeline: bench_aug_cost.py measures that), steady state after warm-up steps, median over rounds;
  - share of peak = images/s x training FLOPs per image / peak, against the variant's own fp32 peak and against the
    base variant's (the host's native float32 peak);
  - the process's CPU use during its steps (CPU seconds / wall: 2.0 = both cores busy) and the other load.

Each variant runs in its own child process (environment variables such as ONEDNN_MAX_CPU_ISA must be set before
TensorFlow loads); all children are built and warmed up first, then timed in alternating rounds (one child
works at a time, the others wait on a pipe), so that machine load affects all alike.

Variants: each option below takes a comma list; its first value is the base, and each other value is one
variant differing from the base in that option alone (--grid: every combination instead). --variant adds
explicit combinations.

    python bench/bench_throughput.py [--size 64,96] [--widths 32-64-128-256,24-48-96-192] [--batch 64,128]
        [--precision float32,bfloat16] [--isa native,AVX2] [--onednn 1,0] [--threads default,1x1,2x1]
        [--inputs edges,none] [--block basic,inverted] [--backend tensorflow,jax] [--xla off,on] [--variant isa=AVX2,batch=128 ...] [--grid]
        [--rounds 3] [--steps 8] [--warmup 3] [--peak-n 2048]

--isa: a value for ONEDNN_MAX_CPU_ISA (AVX2, AVX512_CORE, AVX512_CORE_BF16, ...), native = unset; AVX2 emulates
the goal's AVX2-only hosts (same cores and clock: only the vector width and bf16 instructions go).
--threads: TF intra x inter op threads, default = TensorFlow's (all cores).
--backend: KERAS_BACKEND for the child (jax / torch must be importable, e.g. PYTHONPATH=/tmp/jaxpkgs after
`pip install --no-deps --target /tmp/jaxpkgs jax jaxlib`; the builder's fused BatchNorm falls back to Keras' own
on other backends; compiled with jit_compile=True there, XLA being JAX's only fast path).
--xla: jit_compile for the tensorflow backend (the builder uses off on a CPU).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostinfo import LoadMeter, cpu_line, load_text, proc_cpu_s  # noqa: E402

OPTIONS = {  # option -> default comma list (first = base)
    "size": "64,96",
    "widths": "32-64-128-256,24-48-96-192",
    "batch": "64,128",
    "precision": "float32,bfloat16",
    "isa": "native,AVX2",
    "onednn": "1,0",
    "threads": "default,1x1",
    "inputs": "edges,none",
    "block": "basic",
    "backend": "tensorflow",
    "xla": "off",
}
TAG = "@@"   # child -> parent protocol lines on stdout start with this


# ---------------------------------------------------------------- FLOPs ----------------------------------------

def _flat_layers(model):
    """Layers in topological order, nested models expanded."""
    for layer in model.layers:
        if hasattr(layer, "layers") and getattr(layer, "layers", None):
            yield from _flat_layers(layer)
        else:
            yield layer


def count_flops(model) -> dict:
    """Analytic FLOPs per image: {'forward', 'train', 'by_kind'} (see the module docstring)."""
    from keras import layers

    fwd = train = 0
    seen_trainable = False
    by_kind: dict[str, int] = {}
    for layer in _flat_layers(model):
        if isinstance(layer, layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            f = 2 * h * w * c * kh * kw
        elif isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            f = 2 * h * w * c_out * kh * kw * c_in // max(1, getattr(layer, "groups", 1))
        elif isinstance(layer, layers.Dense):
            f = 2 * int(layer.input.shape[-1]) * int(layer.units)
        else:
            continue
        f = int(f)
        fwd += f
        if layer.trainable and layer.trainable_weights:
            cost = f * (3 if seen_trainable else 2)   # + weight gradient (+ input gradient after the first)
            seen_trainable = True
        else:
            cost = f * (2 if seen_trainable else 1)   # frozen: input gradient only if something before trains
        train += cost
        kind = type(layer).__name__
        by_kind[kind] = by_kind.get(kind, 0) + f
    return {"forward": fwd, "train": train, "by_kind": by_kind}


def tf_profiler_forward_flops(model) -> float | None:
    """Forward FLOPs per image as TensorFlow's graph profiler counts them (every op with registered flop
    statistics: the convolutions and matmuls, plus elementwise ops such as bias-add, BatchNorm's multiply-adds):
    a cross-check of count_flops' forward figure. None where it cannot (another backend)."""
    try:
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
            tf.TensorSpec([1, *model.input_shape[1:]], tf.float32))
        graph = convert_variables_to_constants_v2(fn).graph
        builder = tf.compat.v1.profiler.ProfileOptionBuilder
        opts = builder(builder.float_operation()).with_empty_output().build()
        return float(tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=opts).total_float_ops)
    except Exception:   # noqa: BLE001  (a cross-check only)
        return None


# ---------------------------------------------------------------- child ----------------------------------------

def _send(obj: dict) -> None:
    sys.stdout.write(f"{TAG} {json.dumps(obj)}\n")
    sys.stdout.flush()


def matmul_peak(n: int, dtype: str, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matmul (eager TF on the tensorflow backend, keras.ops elsewhere)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        a = tf.cast(tf.random.stateless_normal((n, n), (1, 2)), dtype)
        b = tf.cast(tf.random.stateless_normal((n, n), (3, 4)), dtype)
        run = lambda: tf.linalg.matmul(a, b).numpy()  # noqa: E731  (.numpy(): wait for the result)
    else:
        import numpy as np

        rng = np.random.default_rng(0)
        a = keras.ops.cast(keras.ops.convert_to_tensor(rng.standard_normal((n, n), np.float32)), dtype)
        b = keras.ops.cast(keras.ops.convert_to_tensor(rng.standard_normal((n, n), np.float32)), dtype)
        run = lambda: keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.matmul(a, b)))  # noqa: E731
    run()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def child(spec: dict) -> None:
    import numpy as np

    import tensorflow as tf   # the builder and the data use TensorFlow on any Keras backend

    if spec["threads"] != "default":
        intra, inter = (int(v) for v in spec["threads"].split("x"))
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    import dataclasses

    import keras

    from subbench.builder import custom_cnn as cnn
    from subbench.builder.models import build_model
    from subbench.builder.recipe import load_recipe
    from subbench.builder.train import _compile, recipe_head

    recipe = load_recipe("cpu")
    recipe = dataclasses.replace(recipe, batch_size=int(spec["batch"]))
    widths = tuple(int(v) for v in spec["widths"].split("-"))
    original = cnn.custom_cnn
    cnn.custom_cnn = lambda *a, **k: original(*a, **{**k, "widths": widths})
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[spec["precision"]]
    keras.mixed_precision.set_global_policy(policy)
    head = recipe_head(recipe)
    inputs = None if spec["inputs"] in ("none", "") else spec["inputs"].replace("+", ",")
    built = build_model(recipe.backbone, input_size=int(spec["size"]), inputs=inputs, head=head, seed=0,
                        block=spec.get("block", "basic"))
    _compile(built, recipe, recipe.learning_rate, steps=100, epochs=1, step_cosine=False)
    # the builder compiles without XLA on a CPU; --xla on, and any other backend (un-jitted JAX runs op by op), jit
    if spec["xla"] == "on" or spec["backend"] != "tensorflow":
        m = built.model
        m.compile(optimizer=m.optimizer, loss=m.loss, metrics=["accuracy"], jit_compile=True)
    cnn.custom_cnn = original
    model = built.model
    flops = count_flops(model)
    flops["tf_profiler_forward"] = tf_profiler_forward_flops(model) if spec["backend"] == "tensorflow" else None

    b = recipe.batch_size
    rng = np.random.default_rng(0)
    x = np.round(rng.uniform(0, 255, (b, 96, 96, 3))).astype("float32")
    y = np.eye(8, dtype="float32")[rng.integers(0, 8, b)]
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - t0
    for _ in range(spec["warmup"]):
        model.train_on_batch(x, y)
    peaks = {"float32": matmul_peak(spec["peak_n"], "float32")}
    if spec["precision"] != "float32":
        peaks[spec["precision"]] = matmul_peak(spec["peak_n"], spec["precision"])
    _send({"ready": True, "params": model.count_params(), "flops": flops, "first_step_s": first, "peaks": peaks,
           "keras": keras.__version__, "backend": keras.backend.backend(), "tf": tf.__version__})
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "steps":
            n = int(cmd[1])
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                model.train_on_batch(x, y)
            _send({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "images": n * b})
        elif cmd[0] == "peak":
            _send({"peaks": {p: matmul_peak(spec["peak_n"], p) for p in peaks}})


# ---------------------------------------------------------------- parent ---------------------------------------

def variant_env(spec: dict) -> dict:
    env = dict(os.environ)
    if spec["isa"] != "native":
        env["ONEDNN_MAX_CPU_ISA"] = spec["isa"]
    else:
        env.pop("ONEDNN_MAX_CPU_ISA", None)
    env["TF_ENABLE_ONEDNN_OPTS"] = str(spec["onednn"])
    env["KERAS_BACKEND"] = spec["backend"]
    return env


def name_of(spec: dict, base: dict) -> str:
    diff = [f"{k}={spec[k]}" for k in OPTIONS if spec[k] != base[k]]
    return ", ".join(diff) or "base"


def plan(args) -> tuple[dict, list[dict]]:
    values = {k: [v.strip() for v in getattr(args, k).split(",") if v.strip()] for k in OPTIONS}
    base = {k: v[0] for k, v in values.items()}
    if args.grid:
        specs = [dict(zip(OPTIONS, combo)) for combo in itertools.product(*values.values())]
    else:
        specs = [dict(base)]
        for k, vs in values.items():
            specs += [{**base, k: v} for v in vs[1:]]
    for extra in args.variant:
        spec = dict(base)
        for item in extra.split(","):
            k, _, v = item.partition("=")
            if k not in OPTIONS:
                sys.exit(f"--variant: unknown option {k!r} (one of {', '.join(OPTIONS)})")
            spec[k] = v
        specs.append(spec)
    unique = []
    for s in specs:
        if s not in unique:
            unique.append(s)
    return base, unique


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL it when the parent dies, so that an interrupted bench leaves no
    idle TensorFlow processes behind (a child blocked in a step would not notice its closed stdin)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Child:
    def __init__(self, spec: dict, args, name: str):
        self.spec, self.name = {**spec, "warmup": args.warmup, "peak_n": args.peak_n}, name
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(self.spec)],
                                     env=variant_env(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1, preexec_fn=_die_with_parent)
        self.info: dict | None = None
        self.rounds: list[dict] = []
        self.error: str | None = None

    def read(self) -> dict | None:
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        self.log.seek(0)
        tail = self.log.read()[-1500:]
        self.error = f"child exited {self.proc.wait()}: " + (tail.strip().splitlines() or ["?"])[-1]
        return None

    def ask(self, cmd: str) -> dict | None:
        if self.error:
            return None
        try:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for k, default in OPTIONS.items():
        ap.add_argument(f"--{k}", default=default, help=f"comma list, first = base (default {default})")
    ap.add_argument("--variant", action="append", default=[], help="an explicit combination, e.g. isa=AVX2,batch=128")
    ap.add_argument("--grid", action="store_true", help="every combination of the lists")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="training steps a round")
    ap.add_argument("--warmup", type=int, default=3, help="steps after the first (traced) one before timing")
    ap.add_argument("--peak-n", type=int, default=2048, help="matmul size for the peak")
    ap.add_argument("--only", default="", help="keep only variants whose name contains this text")
    args = ap.parse_args()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the finally: close the children
    base, specs = plan(args)
    specs = [s for s in specs if args.only in name_of(s, base)]
    print(cpu_line(), flush=True)
    print(f"base: {json.dumps(base)}; {len(specs)} variants, {args.rounds} rounds x {args.steps} steps "
          f"(after 1 + {args.warmup} warm-up steps), each in its own process", flush=True)

    meter = LoadMeter().start()
    children = []
    for spec in specs:   # one at a time: a child building does not slow another one's warm-up
        c = Child(spec, args, name_of(spec, base))
        c.info = c.read()
        if c.info is None:
            print(f"  {c.name}: failed to start: {c.error}", flush=True)
        else:
            print(f"  {c.name}: ready, first step {c.info['first_step_s']:.1f} s, fp32 peak "
                  f"{c.info['peaks']['float32']:.0f} GFLOP/s", flush=True)
        children.append(c)
    live = [c for c in children if c.info]
    try:
        for r in range(args.rounds):
            for c in (live if r % 2 == 0 else live[::-1]):
                m = LoadMeter().start()
                cpu0 = proc_cpu_s(c.proc.pid)
                out = c.ask(f"steps {args.steps}")
                cpu1 = proc_cpu_s(c.proc.pid)
                if out is None:
                    print(f"  {c.name}: failed: {c.error}", flush=True)
                    continue
                load = m.stop(own_cpu_s=(cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else out["cpu"])
                c.rounds.append({**out, "others": load.get("others"), "steal": load.get("steal")})
        for c in live:
            out = c.ask("peak")
            if out:
                for p, v in out["peaks"].items():
                    c.info["peaks"][p] = max(c.info["peaks"][p], v)
    finally:
        for c in children:
            c.close()
    total = meter.stop()

    basec = next((c for c in live if c.name == "base"), None)
    host_peak = basec.info["peaks"]["float32"] if basec else None
    info0 = live[0].info if live else {}
    print(f"\nTensorFlow {info0.get('tf')}, Keras {info0.get('keras')}; FLOPs counted analytically from "
          "Conv2D/DepthwiseConv2D/Dense shapes (training = fwd + weight grad + input grad), forward cross-checked "
          "by TF's profiler")
    if host_peak:
        print(f"host float32 peak (base variant's process, {args.peak_n}^3 matmul, best of 5, start and end): "
              f"{host_peak:.0f} GFLOP/s")
    hdr = (f"{'variant':34s} {'params':>7s} {'fwd MF':>7s} {'trn MF':>7s} {'3xfwd':>6s} {'tfprof':>6s} {'img/s':>7s} {'ratio':>6s} "
           f"{'GFLOP/s':>8s} {'peak':>6s} {'%own':>5s} {'%host':>5s} {'cores':>5s} {'others':>6s} {'img/cpu-s':>9s} {'ratio':>6s}")
    print(hdr)
    base_ips = base_ipc = None
    for c in children:
        if not c.info or not c.rounds:
            print(f"{c.name:34s} failed: {c.error}")
            continue
        ips = statistics.median(r["images"] / r["wall"] for r in c.rounds)
        # images per CPU-second of the variant's process: the figure to compare when the load left a variant
        # fewer cores than another (other work on the machine; 'cores' < the threads it asked for)
        ipc = statistics.median(r["images"] / r["cpu"] for r in c.rounds)
        if base_ips is None and c.name == "base":
            base_ips, base_ipc = ips, ipc
        f = c.info["flops"]
        gflops = ips * f["train"] / 1e9
        own_peak = c.info["peaks"]["float32"]
        cores = statistics.median(r["cpu"] / r["wall"] for r in c.rounds)
        others = [r["others"] for r in c.rounds if r.get("others") is not None]
        print(f"{c.name:34s} {c.info['params'] / 1e6:6.2f}M {f['forward'] / 1e6:7.1f} {f['train'] / 1e6:7.1f} "
              f"{3 * f['forward'] / 1e6:6.0f} {(f['tf_profiler_forward'] or float('nan')) / 1e6:6.1f} {ips:7.1f} "
              f"{ips / base_ips if base_ips else float('nan'):6.2f} "
              f"{gflops:8.1f} {own_peak:6.0f} {100 * gflops / own_peak:5.1f} "
              f"{100 * gflops / host_peak if host_peak else float('nan'):5.1f} {cores:5.2f} "
              f"{(100 * statistics.median(others)) if others else float('nan'):5.0f}% {ipc:9.1f} "
              f"{ipc / base_ipc if base_ipc else float('nan'):6.2f}")
        extra = {p: v for p, v in c.info["peaks"].items() if p != "float32"}
        if extra:
            print(f"{'':34s}   {', '.join(f'{p} matmul peak {v:.0f} GFLOP/s' for p, v in extra.items())}; "
                  f"share of it {100 * gflops / max(extra.values()):.1f}%")
    print("columns: fwd/trn MF = MFLOP an image forward / training step; 3xfwd = the usual estimate; tfprof = "
          "forward MFLOP as TF's graph profiler counts them (elementwise ops included); ratio = img/s over the base's; "
          "peak = the variant's own fp32 matmul GFLOP/s; %own / %host = share of that peak / of the base's (host native fp32); cores = CPU-seconds per second of the variant's process while it "
          "stepped; others = the machine's busy share not from it, median over its rounds; img/cpu-s = images per "
          "CPU-second of its process, and its ratio to the base's (compare these when 'others' differ)")
    print(load_text(total))


if __name__ == "__main__":
    main()

"""Scoring program of a bundle written by `subbench bundle make` (copied as scoring_program/score.py).

    python3 /app/program/score.py /app/input /app/output

Reads the reference labels (input/ref: labels.npy, classes.json) and what the ingestion program left in the
prediction output (input/res: predictions_0000.npy, .subbench/progress.json and error.json, and the worker's
`metadata` with the ingestion program's exit code), names the outcome with subbench's own classifier
(classify.py beside this file, a copy of subbench/local_bench/classify.py: the statuses `subbench score` reports,
Import_Error ... Output_Value_Error), and then:
- ok: writes scores.json ({leaderboard key: metric, accuracy, balanced_accuracy, macro_f1}) and
  detailed_results.html (metrics, per-class table, confusion matrix);
- otherwise: writes detailed_results.html with the status, prints "STATUS: message" to stderr and exits 1 without
  scores, so the submission fails as a broken one does on the server.

numpy and the standard library only; Python 3.9+ (classify.py's annotations).
"""

import html
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from classify import classify  # noqa: E402


def _json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _worker_metadata(path):
    """The worker's output/metadata (yaml.dump of four scalars), read without PyYAML."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                value = value.strip()
                if value in ("null", "~", ""):
                    out[key.strip()] = None
                else:
                    try:
                        out[key.strip()] = float(value) if "." in value else int(value)
                    except ValueError:
                        out[key.strip()] = value
    except OSError:
        pass
    return out


def _stage(progress):
    times = (progress or {}).get("times", {})
    for mark, stage in (("finished", "done"), ("initialized", "predict"), ("imported", "init"), ("ready", "import")):
        if mark in times:
            return stage
    return "start"


def metrics(y_true, y_pred, k):
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        denom = 2 * tp + (predicted - tp) + (support - tp)
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "balanced_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
        "macro_f1": float(f1.mean()),
        "precision": precision, "recall": recall, "f1": f1, "support": support, "confusion_matrix": cm,
    }


def _page(title, body):
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>%s</title><style>"
            "body{font-family:sans-serif;margin:1rem}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
            "table{border-collapse:collapse}</style></head><body>%s</body></html>" % (html.escape(title), body))


def main():
    input_dir = sys.argv[1] if len(sys.argv) > 1 else "/app/input"
    output_dir = sys.argv[2] if len(sys.argv) > 2 else "/app/output"
    ref, res = os.path.join(input_dir, "ref"), os.path.join(input_dir, "res")
    cfg = _json(os.path.join(ref, "classes.json"))
    names = cfg["class_names"]
    labels = np.load(os.path.join(ref, "labels.npy")).astype(np.int64)
    meta = _worker_metadata(os.path.join(res, "metadata"))
    state = os.path.join(res, ".subbench")
    progress = _json(os.path.join(state, "progress.json"))
    error = _json(os.path.join(state, "error.json"))
    pred_path = os.path.join(res, "predictions_0000.npy")
    raw = None
    if os.path.exists(pred_path):
        try:
            raw = np.load(pred_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raw = str(exc)
    rc = meta.get("ingestionExitCode")
    if rc is None:
        status, message = "Import_Error", "the ingestion program did not run (no ingestionExitCode in the metadata)"
    else:
        rc = int(rc)
        if 128 < rc < 160:
            rc = 128 - rc  # a container killed by signal N exits 128 + N; classify takes subprocess's -N
        verdict = classify(returncode=rc, n_classes=len(names), stage_reached=_stage(progress), error=error,
                           outputs=[("scored", len(labels), raw)])
        status, message = verdict.status, verdict.message
    if status != "ok":
        body = "<h1>%s</h1><p>%s</p>" % (html.escape(status), html.escape(message))
        with open(os.path.join(output_dir, "detailed_results.html"), "w") as f:
            f.write(_page(status, body))
        sys.stderr.write("%s: %s\n" % (status, message))
        sys.exit(1)
    pred = verdict.labels["scored"]
    m = metrics(labels, pred, len(names))
    scores = {cfg["leaderboard_key"]: m[cfg["metric"]]}
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        scores.setdefault(key, m[key])
    with open(os.path.join(output_dir, "scores.json"), "w") as f:
        json.dump(scores, f)
    rows = "".join("<tr><td style='text-align:left'>%s</td><td>%.3f</td><td>%.3f</td><td>%.3f</td><td>%d</td></tr>"
                   % (html.escape(n), m["precision"][i], m["recall"][i], m["f1"][i], m["support"][i])
                   for i, n in enumerate(names))
    cm = "".join("<tr><th>%s</th>%s</tr>" % (html.escape(n), "".join("<td>%d</td>" % v for v in row))
                 for n, row in zip(names, m["confusion_matrix"]))
    body = ("<h1>%s %.4f</h1><p>n = %d, balanced accuracy %.4f, macro F1 %.4f</p>"
            "<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th>"
            "</tr>%s</table><h2>Confusion matrix (rows: true)</h2><table><tr><th></th>%s</tr>%s</table>"
            % (html.escape(cfg["leaderboard_key"]), scores[cfg["leaderboard_key"]], len(labels),
               m["balanced_accuracy"], m["macro_f1"], rows, "".join("<th>%s</th>" % html.escape(n) for n in names),
               cm))
    with open(os.path.join(output_dir, "detailed_results.html"), "w") as f:
        f.write(_page("scores", body))
    print("scores: %s" % json.dumps(scores))


if __name__ == "__main__":
    main()

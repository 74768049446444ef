"""Ingestion program of a bundle written by `subbench bundle make` (copied as ingestion_program/run_ingestion.py).

It runs subbench's own ingestion program (ingestion.py beside it, a copy of subbench/local_bench/_ingestion.py:
the file `subbench score` runs for the profile), with the run folder the Codabench worker gives it:

    python3 /app/program/run_ingestion.py /app/input_data /app/output /app/program /app/ingested_program

input_data holds sets.json and 0000.npy (the images); the predictions and ingestion.py's progress and error
records go to the output (predictions.npy, .subbench/), which the scoring program reads as /app/input/res.
bundle.json (beside this file) says where the submission runs from (`cwd`: "submission" = the submission folder,
as the AN2DL server did; "program" = /app/program, the worker's working directory) and what it imports.

Standard library only (ingestion.py needs numpy); Python 3.8+.
"""

import json
import os
import runpy
import sys


def main():
    args = sys.argv[1:] + [None] * 4
    input_dir = args[0] or "/app/input_data"
    output_dir = args[1] or "/app/output"
    program_dir = args[2] or os.path.dirname(os.path.abspath(__file__))
    submission_dir = args[3] or "/app/ingested_program"
    with open(os.path.join(program_dir, "bundle.json")) as f:
        cfg = json.load(f)
    state_dir = os.path.join(output_dir, ".subbench")
    os.makedirs(state_dir, exist_ok=True)
    if cfg.get("cwd", "submission") == "submission":
        os.chdir(submission_dir)
    script = os.path.join(program_dir, "ingestion.py")
    sys.argv = [script, "--input", input_dir, "--output", output_dir, "--submission", submission_dir,
                "--state-dir", state_dir, "--module", cfg.get("module", "model"),
                "--class-name", cfg.get("class_name", "Model")]
    sys.path[0] = program_dir
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()

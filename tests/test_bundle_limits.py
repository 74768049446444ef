"""Bundle runs at the edges of the worker's container: what a program writes outside its folders, a program killed
as the kernel's OOM killer kills, one that runs out of memory. Bundles made here with test_bundle's helpers."""

from __future__ import annotations

from pathlib import Path

from test_bundle import INGEST, MODEL, score, submission, v2_bundle
from subbench.local_bench.bundle_mounts import app_mode


def test_what_a_program_writes_to_tmp_stays_in_its_container(tmp_path):
    """In the worker's container /tmp is the container's own: a program writing there leaves nothing on the
    host. With private mounts (namespace mode) the same holds here; the run itself is not disturbed."""
    marker = Path("/tmp") / f"subbench-escape-{tmp_path.name}.txt"
    writer = INGEST.replace("from model import predict", "from model import predict\n"
                            f"open({str(marker)!r}, 'w').write('escaped')\n"
                            "open('/tmp/scratch.txt', 'w').write('scratch')")
    result = score(submission(tmp_path, {"model.py": MODEL}), v2_bundle(tmp_path, ingestion=writer))
    assert result.ok and result.value == 1.0, (result.message, result.warnings)
    if app_mode()[0] == "namespace":
        assert not marker.exists()
    else:                                         # rewrite mode: no private mounts, the host's /tmp is the one seen
        marker.unlink(missing_ok=True)


def test_a_program_killed_as_the_oom_killer_kills_is_named(tmp_path):
    killer = INGEST.replace("from model import predict", "from model import predict\n"
                            "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    result = score(submission(tmp_path, {"model.py": MODEL}), v2_bundle(tmp_path, ingestion=killer))
    named = [w for w in result.warnings if w.startswith("Out_Of_Memory?")]
    assert named and "exited with code 137" in named[0] and "kernel's OOM killer" in named[0], result.warnings


def test_a_program_that_runs_out_of_memory_is_named(tmp_path):
    hog = INGEST.replace("from model import predict", "from model import predict\nraise MemoryError('hog')")
    result = score(submission(tmp_path, {"model.py": MODEL}), v2_bundle(tmp_path, ingestion=hog))
    named = [w for w in result.warnings if w.startswith("Out_Of_Memory?")]
    assert named and "ran out of memory (MemoryError)" in named[0], result.warnings

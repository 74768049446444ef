"""examples/quickstart.ipynb, run headless the way a user runs it: every cell, in a real IPython kernel.

The notebook runs once per session (`quickstart` fixture) with nbclient and an ipykernel kernel on this very
interpreter (a kernelspec named "python3" written in a tmp folder, so an installed system kernel of the same
name cannot be picked), in a tmp working directory, with its cell tagged "parameters" replaced by CI_PARAMETERS
(papermill's convention, without papermill). nbclient raises on the first cell that errors.
The executed notebook is then exported to HTML with nbconvert's lab template minus its CDN scripts (require.js,
MathJax, mermaid: there is no network) and opened in headless Chromium through test_report_browser's probe.
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from conftest import REPO

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"
# The smallest run that still trains, packages, checks and scores both models: every class in both parts.
CI_PARAMETERS = """N_TRAIN = 96
N_HELDOUT = 64
EPOCHS = 1
BATCH_SIZE = 32
SEED = 0
OUT_DIR = "quickstart_out"
"""
CELL_TIMEOUT_S = 600
SCORE_LINE = re.compile(r"^\s*(plain|hidden-aware): hidden-like (\d\.\d{4})\s+clean (\d\.\d{4})\s+status (\S+)\s*$",
                        re.M)
# The lab template without the scripts it loads from CDNs; nothing else in it loads anything.
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""

pytestmark = pytest.mark.xdist_group("notebook")  # one worker runs the notebook once for both tests


class Run:
    def __init__(self, nb, workdir, error):
        self.nb, self.workdir, self.error = nb, workdir, error

    def tagged(self, tag: str):
        cells = [c for c in self.nb.cells if tag in c.metadata.get("tags", [])]
        assert len(cells) == 1, f"{len(cells)} cells tagged {tag!r}"
        return cells[0]

    def text(self, tag: str) -> str:
        return "".join(o.get("text", "") for o in self.tagged(tag).outputs if o.output_type == "stream")

    def data(self, tag: str, mime: str) -> list[str]:
        return [o.data[mime] for o in self.tagged(tag).outputs if mime in o.get("data", {})]


def with_parameters(nb, source: str):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    names = [set(re.findall(r"^(\w+) = ", text, re.M)) for text in (cells[0].source, source)]
    assert names[0] == names[1], f"the notebook's parameters are {sorted(names[0])}, CI sets {sorted(names[1])}"
    cells[0].source = source
    return nb


def python_kernel_manager(tmp_path):
    """A KernelManager for kernel "python3" = ipykernel on sys.executable (this venv), from a tmp kernelspec."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (subbench tests)", "language": "python"}), encoding="utf-8")
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))
    assert km.kernel_spec.argv[0] == sys.executable
    return km


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    mp = pytest.MonkeyPatch()
    mp.delenv("MPLBACKEND", raising=False)       # the kernel's inline backend must draw the figures
    mp.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    root = tmp_path_factory.mktemp("notebook")
    workdir = root / "work"
    workdir.mkdir()
    nb = with_parameters(nbformat.read(NOTEBOOK, as_version=4), CI_PARAMETERS)
    client = NotebookClient(nb, km=python_kernel_manager(root), timeout=CELL_TIMEOUT_S, allow_errors=False,
                            resources={"metadata": {"path": str(workdir)}})
    error = None
    try:
        client.execute()
    except CellExecutionError as exc:
        error = str(exc)
    finally:
        mp.undo()
    return Run(nb, workdir, error)


def test_quickstart_runs_every_cell(quickstart):
    assert quickstart.error is None, quickstart.error
    errors = [o for c in quickstart.nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert all(c.execution_count for c in quickstart.nb.cells if c.cell_type == "code")

    import subbench

    # The install cell found subbench installed and installed nothing.
    assert quickstart.text("install").strip() == f"subbench {subbench.__version__}"
    # The clean vs hidden-like figure was drawn.
    assert len(quickstart.data("preview", "image/png")) == 1
    # Both zips written in the working directory, none in the repository.
    assert sorted(p.name for p in (quickstart.workdir / "quickstart_out").iterdir()) == [
        "an2dl-local.zip", "hidden_aware.zip", "plain.zip"]
    assert not (REPO / "quickstart_out").exists() and not (REPO / "examples" / "quickstart_out").exists()
    assert "removed the training-only HiddenSetAugmentation layer" in quickstart.text("package")
    # The check passed, shown as its report.
    (check_html,) = quickstart.data("check", "text/html")
    assert "PASS" in check_html and "FAIL" not in check_html
    # Both models scored (hidden-like and clean), the report and the leaderboard shown.
    scores = {m[0]: m[1:] for m in SCORE_LINE.findall(quickstart.text("score"))}
    assert set(scores) == {"plain", "hidden-aware"}, quickstart.text("score")
    assert all(status == "ok" for *_, status in scores.values())
    (report_html,) = quickstart.data("report", "text/html")
    assert f'id="score">{scores["hidden-aware"][0]}<' in report_html
    (board_html,) = quickstart.data("compare", "text/html")
    assert 'id="leaderboard"' in board_html and "plain" in board_html and "hidden-aware" in board_html
    # Why it falls: the top ops of each model, and Grad-CAM heat maps inline.
    why = quickstart.text("breakdown")
    assert why.count("costs") == 6 and "corruption draws" in why, why
    (explain_html,) = quickstart.data("explain", "text/html")
    assert "data:image/png;base64," in explain_html and "gradcam" in explain_html.lower()
    # The bundle run: the worker's status, the bundle's leaderboard key, its report inline.
    bundle_line = re.search(r"bundle run: (\S+) accuracy (\d\.\d{4})", quickstart.text("bundle"))
    assert bundle_line and bundle_line[1] == "Finished", quickstart.text("bundle")
    (bundle_html,) = quickstart.data("bundle", "text/html")
    assert 'id="status">Finished<' in bundle_html and 'id="score">' + bundle_line[2][:4] in bundle_html


@pytest.mark.parametrize("source", ["/content/subbench", None])
def test_install_cell_installs_only_where_subbench_is_missing(source, tmp_path, monkeypatch):
    """The Colab path, which CI (subbench installed) never takes: `import subbench` fails, so the cell runs
    `%pip install` on SUBBENCH_SOURCE — or stops with a clear message while it is still the placeholder."""
    import nbformat
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    (cell,) = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if "install" in c.metadata.get("tags", [])]
    code = cell.source
    if source is not None:
        code, n = re.subn(r'^SUBBENCH_SOURCE = "[^"]*"', f'SUBBENCH_SOURCE = "{source}"', code, flags=re.M)
        assert n == 1
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell(config=config)
    installs = []

    def pip(line):
        installs.append(line)
        sys.modules.pop("subbench")                      # "installed": the next import finds it

    shell.register_magic_function(pip, "line", "pip")
    monkeypatch.setitem(sys.modules, "subbench", None)   # import subbench raises ImportError
    result = shell.run_cell(code)
    if source is None:
        assert isinstance(result.error_in_exec, AssertionError) and installs == []
        assert "set SUBBENCH_SOURCE" in str(result.error_in_exec)
    else:
        assert result.success, result.error_in_exec
        assert installs == [f'install -q "{source}"']
        assert shell.user_ns["subbench"].__name__ == "subbench"


def offline_html(nb) -> str:
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", template_file="offline.html.j2",
                            extra_loaders=[DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})])
    body, _ = exporter.from_notebook_node(nb)
    return body


def test_exported_notebook_renders_in_chromium_and_shows_the_score(quickstart, tmp_path):
    from test_report_browser import chromium, open_in_chromium

    chromium()  # skip (or fail in CI) before the export where there is no browser
    if quickstart.error:
        pytest.fail("the notebook did not run (test_quickstart_runs_every_cell has the cell's error)")
    body = offline_html(quickstart.nb)
    # Nothing to fetch from a network: no script or stylesheet from anywhere but the page itself.
    assert not re.findall(r"<(?:script|link|img|iframe)\b[^>]*(?:src|href)\s*=\s*[\"'](?:https?:)?//", body)
    page = tmp_path / "quickstart.html"
    page.write_text(body, encoding="utf-8")
    seen, console = open_in_chromium(page, tmp_path)
    assert console == [] and seen["errors"] == []
    # The preview figure and the score report's figures (confusion matrix, per-class bars, mistakes, ...).
    assert seen["images"] >= 4 and seen["broken"] == 0
    scores = {m[0]: m[1] for m in SCORE_LINE.findall(quickstart.text("score"))}
    assert seen["score"] == scores["hidden-aware"]
    assert seen["status"] == "ok"

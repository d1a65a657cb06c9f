"""The notebooks run top to bottom in a real kernel (nbclient), on a temporary registry copy: the
retrain notebook saves a new version, the promote notebook promotes it, and a PromotedModel (what
a running scorer holds), opened on the same registry before the notebooks ran, scores with the new
version without a restart. The committed notebooks carry no outputs and the shipped registry is
untouched."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from models.registry import PACKAGED, PromotedModel, Registry
from models.synthetic import generate, labelled_sessions

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["01-explore-transactions", "02-retrain-and-evaluate", "03-promote"]
TIME_LIMIT_S = 60.0  # each notebook, on the 2-core CI machine
SHIPPED = "v0001-lof"
NEW = "v0002-lof"  # the version the retrain notebook saves into the copy of the shipped registry


@dataclass
class Run:
    notebooks: dict[str, nbformat.NotebookNode]
    seconds: dict[str, float]
    promoted_after: dict[str, str | None]  # the registry's promoted version after each notebook
    registry: Path
    scored_before: tuple[str, int]  # (model name, sessions scored) by the PromotedModel
    scored_after: tuple[str, int]
    refreshed: bool


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _score(promoted: PromotedModel, seed: int) -> tuple[str, int]:
    """Score a small synthetic fleet's sessions with the model the PromotedModel holds now."""
    sessions = labelled_sessions(generate(sessions=200, seed=seed))
    scores = promoted.current.score(sessions)
    assert len(scores) == len(sessions) > 0
    return promoted.current.name, len(scores)


def _read(path: Path) -> nbformat.NotebookNode:
    notebook: nbformat.NotebookNode = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    return notebook


def _execute(path: Path) -> tuple[nbformat.NotebookNode, float]:
    notebook = _read(path)
    started = time.monotonic()
    NotebookClient(notebook, timeout=int(TIME_LIMIT_S * 2), kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
    return notebook, time.monotonic() - started


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    registry = tmp_path_factory.mktemp("notebooks") / "registry"
    shutil.copytree(PACKAGED, registry)
    shipped = _tree_digest(PACKAGED)
    now = [0.0]  # the scorer's wall clock for its registry checks
    promoted_model = PromotedModel(registry, check_interval_s=10.0, clock=lambda: now[0])
    scored_before = _score(promoted_model, seed=41)
    env = {"CHARGEWATCH_NOTEBOOK_REGISTRY": str(registry), "CHARGEWATCH_NOTEBOOK_SESSIONS": "2000",
           "CHARGEWATCH_NOTEBOOK_SEED": "3", "CHARGEWATCH_NOTEBOOK_SCORE_SESSIONS": "200",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}  # Agg-rendered PNGs, no display
    notebooks, seconds, promoted = {}, {}, {}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)  # the kernel inherits the environment its parameters cell reads
        for path in NOTEBOOKS:
            notebooks[path.stem], seconds[path.stem] = _execute(path)
            promoted[path.stem] = Registry(registry).promoted()
    now[0] = 11.0  # past the check interval (10 s) of wall time
    refreshed = promoted_model.refresh()
    scored_after = _score(promoted_model, seed=42)
    assert _tree_digest(PACKAGED) == shipped, "a notebook wrote into the shipped registry"
    yield Run(notebooks, seconds, promoted, registry, scored_before, scored_after, refreshed)


def _outputs(notebook: nbformat.NotebookNode, kind: str = "stream") -> list[nbformat.NotebookNode]:
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
            if out.output_type == kind or (kind == "image" and "image/png" in out.get("data", {}))]


def _text(notebook: nbformat.NotebookNode) -> str:
    return "".join(out.text for out in _outputs(notebook))


def test_committed_notebooks_have_no_outputs_and_a_parameters_cell() -> None:
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    for path in NOTEBOOKS:
        notebook = _read(path)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        dirty = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
        assert not dirty, f"{path.name}: code cells {dirty} carry outputs; strip them before committing"
        assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell is not tagged"
        assert "CHARGEWATCH_NOTEBOOK_" in code[0].source


def test_every_notebook_runs_without_errors_within_the_time_limit(run: Run) -> None:
    assert list(run.notebooks) == EXPECTED
    for name, notebook in run.notebooks.items():
        assert not _outputs(notebook, "error"), name
        assert all(cell.execution_count for cell in notebook.cells if cell.cell_type == "code"), name
        assert run.seconds[name] < TIME_LIMIT_S, f"{name} took {run.seconds[name]:.0f} s"


def test_explore_notebook_plots_the_labelled_fleet(run: Run) -> None:
    notebook = run.notebooks["01-explore-transactions"]
    found = re.search(r"(\d+) sessions from the synthetic fleet \(seed 3\): 68 charge points at 10 sites, "
                      r"(\d+) labelled anomalous", _text(notebook))
    assert found is not None, _text(notebook)
    assert int(found[1]) >= 2000 and int(found[2]) > 30
    assert "explored" in _text(notebook) and "8 anomaly kinds" in _text(notebook)
    assert len(_outputs(notebook, "image")) == 3  # distributions, per site type, anomalies


def test_retrain_notebook_evaluates_both_versions_and_saves_without_promoting(run: Run) -> None:
    notebook = run.notebooks["02-retrain-and-evaluate"]
    text = _text(notebook)
    assert f"saved {NEW}" in text
    assert run.promoted_after["02-retrain-and-evaluate"] == SHIPPED
    for name in (f"lof@{SHIPPED}", f"lof@{NEW}"):
        found = re.search(rf"^{re.escape(name)}: ROC-AUC (\d\.\d+)  precision (\d\.\d+)  recall (\d\.\d+)", text,
                          re.MULTILINE)
        assert found is not None, text
        assert float(found[1]) >= 0.85 and float(found[3]) > 0.3, found[0]
    assert len(_outputs(notebook, "image")) == 1  # precision/recall and ROC side by side
    metadata = Registry(run.registry).metadata(NEW)
    assert metadata["metrics"]["holdout"]["roc_auc"] >= 0.85
    assert "target false-positive rate 0.01" in metadata["threshold_rule"]


def test_promote_notebook_promotes_and_the_promoted_model_swaps_without_restart(run: Run) -> None:
    notebook = run.notebooks["03-promote"]
    text = _text(notebook)
    assert run.promoted_after["03-promote"] == NEW == Registry(run.registry).promoted()
    assert f"refresh() -> True: the running detector now uses lof@{NEW}" in text
    last = notebook.cells[-1].outputs
    assert [out.text.strip() for out in last] == [
        f"promoted {NEW} in {run.registry}; PromotedModel picked it up without restart: lof@{NEW}"]


def test_a_running_scorer_uses_the_version_the_notebook_promoted(run: Run) -> None:
    assert run.scored_before[0] == f"lof@{SHIPPED}"
    assert run.refreshed and run.scored_after[0] == f"lof@{NEW}"


def test_explore_notebook_reads_an_unlabelled_features_export_of_a_capture(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    features = tmp_path / "demo.parquet"
    subprocess.run([sys.executable, "-m", "chargewatch.cli", "features", "--from", "capture",
                    str(NOTEBOOK_DIR.parent / "samples" / "demo.pcap"), "--out", str(features), "--no-progress"],
                   check=True, capture_output=True)
    monkeypatch.setenv("CHARGEWATCH_NOTEBOOK_FEATURES", str(features))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook, _ = _execute(NOTEBOOK_DIR / "01-explore-transactions.ipynb")
    text = _text(notebook)
    assert f"2 sessions from {features}: 2 charge points at 1 sites, 0 labelled anomalous" in text
    assert "explored 2 sessions, 0 anomaly kinds" in text
    assert len(_outputs(notebook, "image")) == 3
    assert not [out for out in _outputs(notebook) if out.name == "stderr"]


def test_notebook_refuses_to_write_the_shipped_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = _tree_digest(PACKAGED)
    monkeypatch.setenv("CHARGEWATCH_NOTEBOOK_REGISTRY", str(PACKAGED))
    with pytest.raises(CellExecutionError, match="registry shipped in the package"):
        _execute(NOTEBOOK_DIR / "03-promote.ipynb")
    assert _tree_digest(PACKAGED) == shipped
    assert Registry(PACKAGED).promoted() == SHIPPED

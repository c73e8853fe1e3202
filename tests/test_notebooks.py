"""Every notebook in colabs/ runs headless (nbclient) on this checkout with small settings
(C2CJAX_NOTEBOOK_SMALL=1: tiny random models on the real tokenizers, a few steps); an
error in any cell fails. The committed notebooks carry the outputs of a full-settings run on
the offline pair (SmolLM2-135M-Instruct <- Gemma-3-270M)."""

import pathlib

import pytest

from c2cjax import offline

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colabs").glob("*.ipynb"))


def test_four_notebooks_committed_with_outputs():
  import nbformat
  assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_train_evaluate",
                                         "03_published_fuser", "04_fuse_in_your_jax"]
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert 'C2CJAX_REPO = ""' in code[0].source and "google.colab" in code[0].source, path
    assert "github.com/c2cjax" not in path.read_text(), path  # no invented URL
    for cell in code:
      assert not any(o.get("output_type") == "error" for o in cell.outputs), path


@pytest.mark.realweights
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
  import nbformat
  from nbclient import NotebookClient
  try:
    offline.smollm2_gguf(), offline.gemma3_gguf()
  except offline.MissingOfflinePackage as e:
    pytest.skip(str(e))
  monkeypatch.setenv("C2CJAX_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("C2CJAX_NOTEBOOK_WORKDIR", str(tmp_path))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(ROOT)}}).execute()

"""The benchmark command's bookkeeping (the timings themselves are never asserted: the machine is
shared and noisy; `python tools/bench.py` measures them)."""

import json

import bench
import pytest

MACHINE = {
    "python": "3.11",
    "torch": "2.13.0",
    "cpu_count": 2,
    "torch_threads": 2,
    "machine": "x86_64",
    "date": "2026-01-01",
}


def test_runtime_table_merges_runs_and_writes_markdown(tmp_path):
    bench.write_runtime_table({"02_clip": {"median_s": 38.5, "runs_s": [34.8, 38.5, 39.1]}},
                              MACHINE, tmp_path)  # fmt: skip
    later = {**MACHINE, "date": "2026-01-02"}
    md = bench.write_runtime_table({"00_shapeworld": {"median_s": 27.9, "runs_s": [29.6, 27.9,
                                   27.5], "cpu_median_s": 26.1, "cpu_runs_s": [27.0, 26.1,
                                   25.9]}}, later, tmp_path)  # fmt: skip
    table = json.loads((tmp_path / "notebook_runtimes.json").read_text())
    assert set(table["notebooks"]) == {"00_shapeworld", "02_clip"}  # merged, not replaced
    assert table["notebooks"]["02_clip"]["date"] == "2026-01-01"
    text = md.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 0")]
    assert rows == [
        "| 00_shapeworld | 27.9 | 26.1 | 29.6, 27.9, 27.5 | 2026-01-02 |",
        "| 02_clip | 38.5 | – | 34.8, 38.5, 39.1 | 2026-01-01 |",  # measured before CPU times
    ]  # sorted by notebook
    assert "median" in text and "2 CPU cores" in text and "2 torch threads" in text
    assert f"over {bench.CPU_BUDGET_S:g} s" in text and "no GPU" in text


def test_reuse_notebooks_needs_a_stored_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "GENERATED", tmp_path)
    with pytest.raises(SystemExit):
        bench.main(["all", "--reuse-notebooks", "--out", str(tmp_path / "all.json")])
    assert "bench notebooks" in capsys.readouterr().err


def test_bad_repeats_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["notebooks", "--repeats", "0"])
    assert "--repeats" in capsys.readouterr().err


def test_run_notebook_returns_wall_and_kernel_cpu_time_and_leaves_the_cells_as_they_were(
    tmp_path,
):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("sum(i * i for i in range(3_000_000))")]
    path = tmp_path / "busy.ipynb"
    nbformat.write(nb, path)
    wall, cpu = bench.run_notebook(path, notebook=nb)
    assert 0 < cpu and 0 < wall  # the kernel's own CPU: its start-up and the busy cell
    assert len(nb.cells) == 1 and nb.cells[0].outputs  # the probe cell is gone, outputs kept


def test_cell_seconds_reads_nbclient_timing():
    import nbformat

    nb = nbformat.v4.new_notebook()
    timed = nbformat.v4.new_code_cell("1")
    timed.metadata["execution"] = {
        "iopub.status.busy": "2026-01-01T10:00:00.000000Z",
        "iopub.status.idle": "2026-01-01T10:00:02.500000Z",
    }
    nb.cells = [timed, nbformat.v4.new_markdown_cell("text"), nbformat.v4.new_code_cell("2")]
    assert bench._cell_seconds(nb) == [2.5]  # untimed cells are skipped


def test_runtime_table_names_stalled_runs(tmp_path):
    md = bench.write_runtime_table({"04_dalle": {"median_s": 62.9, "runs_s": [62.9, 56.9, 660.6]},
                                    "05_ddpm": {"median_s": 64.1, "runs_s": [68.9, 64.1, 63.8]}},
                                   MACHINE, tmp_path).read_text()  # fmt: skip
    assert "04_dalle (661 s)" in md and "05_ddpm (" not in md

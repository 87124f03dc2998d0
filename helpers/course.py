"""Run the whole course: `python -m helpers.course [NN ...]` (what `make course` calls).

Executes every notebook in order in the active profile with nbclient, with a progress bar
over notebooks and cells; writes the executed copies to build/notebooks/, an HTML page per
notebook to build/html/, each notebook's wall time and peak memory into build/results.json
(beside the results the notebooks record themselves) and build/run_times.json, and prints a
summary table. On a failure it names the notebook and the cell, keeps the partial executed
copy, and stops: later notebooks may need what the failed one makes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import get_profile, read_environment
from .io import locked, read_json, write_json
from .runtime import ROOT, build_dir, load_results, results_path, run_times_path

NOTEBOOKS = ROOT / "notebooks"

# Run inside the kernel after the last cell: the kernel's own peak resident memory.
_PEAK_MEMORY_CODE = (
    "import resource, sys\n"
    "_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "print(_kb / 1024 if sys.platform != 'darwin' else _kb / 2**20)"
)


def course_notebooks(selection: list[str] | None = None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if selection:
        wanted = [s.split("_")[0].zfill(2) for s in selection]
        paths = [p for p in paths if p.name[:2] in wanted]
        if not paths:
            raise SystemExit(f"no notebook matches {selection}; notebooks: "
                             + ", ".join(p.stem for p in sorted(NOTEBOOKS.glob('[0-9][0-9]_*.ipynb'))))
    return paths


def run_notebook(path: Path, out_dir: Path, *, timeout: int) -> dict:
    """Execute one notebook cell by cell, each within `timeout` seconds (the profile's
    cell_timeout_s); returns {status, wall_s, peak_mb, failed_cell, error}."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError
    from tqdm.auto import tqdm

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    info = {"status": "ok", "wall_s": None, "peak_mb": None, "failed_cell": None, "error": None}
    start = time.perf_counter()
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    with client.setup_kernel():
        bar = tqdm(total=len(code_cells), desc=f"  {path.stem}", unit="cell", leave=False)
        try:
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                client.execute_cell(cell, index)
                bar.update()
        except (CellExecutionError, CellTimeoutError) as error:
            timed_out = isinstance(error, CellTimeoutError)
            info.update(status="timed out" if timed_out else "failed", failed_cell=index,
                        error=f"no answer within {timeout} s (the profile's cell_timeout_s)"
                        if timed_out else str(error).strip().splitlines()[-1] if str(error).strip()
                        else repr(error))
            first_line = next((l for l in cell.source.splitlines() if l.strip()), "")
            info["cell_source"] = first_line[:80]
        finally:
            bar.close()
        info["wall_s"] = round(time.perf_counter() - start, 1)
        if info["status"] != "timed out":  # a kernel still busy with the cell cannot answer
            info["peak_mb"] = _peak_memory(client, nb)
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)  # partial copy too: outputs up to the failure
    return info


def _peak_memory(client, nb) -> float | None:
    """The kernel's peak resident memory in MB, asked after the notebook's last cell."""
    import nbformat

    nb.cells.append(nbformat.v4.new_code_cell(_PEAK_MEMORY_CODE))  # nbclient runs cells of nb only
    try:
        probe = client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
        text = "".join(o.get("text", "") for o in probe.outputs if o.get("name") == "stdout")
        return round(float(text.strip()), 1)
    except Exception:  # a dead kernel has no memory to report; the status says why
        return None
    finally:
        nb.cells.pop()


def export_html(executed: Path, html_dir: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    html_dir.mkdir(parents=True, exist_ok=True)
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    target = html_dir / (executed.stem + ".html")
    target.write_text(body, encoding="utf-8")
    return target


def _save_run(name: str, info: dict, profile: str) -> None:
    """Add the notebook's timing to results.json and to the cross-profile run_times.json."""
    with locked(results_path()):
        data = load_results()
        data.setdefault("notebooks", {}).setdefault(name, {})["run"] = dict(info, profile=profile)
        write_json(results_path(), data)
    if info["status"] == "ok":
        with locked(run_times_path()):
            times = read_json(run_times_path(), {})
            times.setdefault(profile, {})[name] = {
                "wall_s": info["wall_s"], "peak_mb": info["peak_mb"],
                "date": time.strftime("%Y-%m-%d")}
            write_json(run_times_path(), times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.course", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="numbers or names of notebooks to run (default: all)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML pages")
    args = parser.parse_args(argv)
    from tqdm.auto import tqdm

    read_environment()
    profile = get_profile()
    paths = course_notebooks(args.notebooks)
    out_dir, html_dir = build_dir() / "notebooks", build_dir() / "html"
    if not args.notebooks and results_path().exists():  # a full run starts a fresh results file
        results_path().replace(results_path().with_name("results.previous.json"))
    print(f"running {len(paths)} notebooks in the {profile.name} profile into {build_dir()}")
    rows, failed = [], None
    for path in tqdm(paths, desc="course", unit="notebook"):
        info = run_notebook(path, out_dir, timeout=profile.cell_timeout_s)
        _save_run(path.stem, info, profile.name)
        rows.append((path.stem, info))
        if not args.no_html:
            export_html(out_dir / path.name, html_dir)
        if info["status"] != "ok":
            failed = (path, info)
            break
    if not args.notebooks and failed is None:
        from .report import write_report  # the one-page summary (helpers/report.py)

        print(f"summary page: {write_report()}")

    print(f"\n{'notebook':<28}{'status':<9}{'wall s':>8}{'peak MB':>9}")
    for name, info in rows:
        peak = f"{info['peak_mb']:.0f}" if info["peak_mb"] else "?"
        print(f"{name:<28}{info['status']:<9}{info['wall_s']:>8.1f}{peak:>9}")
    print(f"total wall time: {sum(i['wall_s'] for _, i in rows):.0f} s; results: {results_path()}")
    if failed:
        path, info = failed
        print(f"\n{info['status'].upper()}: {path.name}, code cell at index {info['failed_cell']} "
              f"({info.get('cell_source', '')!r}): {info['error']}\n"
              f"the partial executed copy is {out_dir / path.name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

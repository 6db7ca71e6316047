"""`make bench`: every benchmark in one run, one after the other (they share the 2 cores
with nothing else), then the tables they printed gathered into results/summary.txt."""
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [["roofline.py"], ["engines.py"], ["extraction.py", "--int8"], ["extraction.py", "--engine", "openvino"],
           ["recipe.py"], ["scaling.py"], ["export.py"], ["serve_load.py"], ["scale.py", "--json", "results/scale.json"]]


def main():
    summary = [f"make bench, {time.strftime('%Y-%m-%d %H:%M')}"]
    for script in SCRIPTS:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, str(HERE / script[0]), *script[1:]],
                                capture_output=True, text=True, cwd=HERE)
        print(result.stdout, end="")
        if result.returncode:
            print(result.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{script[0]} failed")
        tables = result.stdout.split("\n\n", 1)[-1]
        summary.append(f"\n## {script[0]} ({time.perf_counter() - started:.0f} s)\n{tables.strip()}")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "summary.txt").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))


if __name__ == "__main__":
    main()

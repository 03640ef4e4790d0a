"""Start-up time of `cnn shape`, `cnn --help` and a shell-completion TAB against `python -c pass` and
`python -c "import torch"`.

Usage: python benchmarks/startup.py [RUNS]
Prints the median wall time of each and the ratios. Target: `cnn shape` and a TAB under 0.15 s median.
"""

import os
import shutil
import statistics
import subprocess
import sys
import time

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
# Byte-compile the package first, as `pip install .` does: with PYTHONDONTWRITEBYTECODE set (as on some CI
# machines) every start would otherwise recompile cnncli from source and time the compiler, not the tool.
import compileall  # noqa: E402

compileall.compile_dir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cnncli"), quiet=1)
cnn = shutil.which("cnn", path=os.path.dirname(sys.executable)) or shutil.which("cnn")
cases = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "cnn shape": [cnn, "shape", "--in", "3x32x32", "--k", "5", "--p", "2", "--out-channels", "10"],
    "cnn --help": [cnn, "--help"],
    "python -m cnncli shape": [sys.executable, "-m", "cnncli", "shape", "--in", "3x32x32", "--k", "5"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
}


# what bash runs on a TAB after `cnn --install-completion` (the script `cnn --show-completion bash` prints)
TAB = {**os.environ, "_CNN_COMPLETE": "complete_bash", "COMP_WORDS": "cnn train --re", "COMP_CWORD": "2"}
cases["TAB (cnn train --re)"] = [cnn]
ENVS = {"TAB (cnn train --re)": TAB}


def median_time(cmd: list[str], env=None) -> float:
    times = []
    subprocess.run(cmd, capture_output=True, check=True, env=env)  # warm the page cache
    for _ in range(RUNS):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env=env)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


results = {name: median_time(cmd, ENVS.get(name)) for name, cmd in cases.items()}
base, torch_t = results["python -c pass"], results['python -c "import torch"']
for name, t in results.items():
    print(
        f"{name:<28} median {t * 1000:7.1f} ms   x{t / base:5.2f} of python -c pass   {t / torch_t:5.2f} of import torch"
    )
for name in ("cnn shape", "TAB (cnn train --re)"):
    verdict = "OK" if results[name] < 0.15 else "OVER TARGET"
    print(f"{name} median {results[name]:.3f} s (target < 0.15 s): {verdict}")

"""Run one function of a test file in a fresh Python process and hand back its JSON result.

Memory is measured from a scan of every tensor alive in the process: inside pytest, that includes
other tests' fixtures. A block's budget is judged the way a build runs, in a process of its own.

    python tests/isolated.py FILE FUNCTION JSON_KWARGS    (prints the JSON result on its last line)
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def run_isolated(file: str | Path, function: str, timeout: float = 600, **kwargs: Any) -> Any:
    done = subprocess.run([sys.executable, str(Path(__file__)), str(file), function, json.dumps(kwargs)],
                          capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    from nfcompile.core.io import to_jsonable

    file, function, arguments = sys.argv[1:4]
    result = runpy.run_path(file)[function](**json.loads(arguments))
    print(json.dumps(to_jsonable(result)))

"""The README's Python example runs and prints what its comments say."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_example_prints_what_it_promises(tmp_path):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    promised = [line.split("# ")[1].split(":")[0].strip()
                for line in code.splitlines() if line.startswith("print(")]
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, check=True)
    assert result.stdout.splitlines() == promised

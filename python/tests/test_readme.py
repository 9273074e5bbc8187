"""The README's Python example runs and prints what its comment says."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_runs():
    text = README.read_text()
    section = text[text.index("## Python") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Event(trivia.started from trivia): 2+2?"
    assert lines[1].startswith("{'events_published': 1, 'events_dispatched': 1, 'handler_errors': 0} [Event(name='trivia.started'")

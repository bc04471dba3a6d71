"""Print where a venv's installed versions differ from constraints.txt (used by .ci/run's newest-deps step).

python3 .ci/drift.py constraints.txt VENV/bin/python
"""

import json
import re
import subprocess
import sys
from pathlib import Path

pins = {}
for line in Path(sys.argv[1]).read_text(encoding="utf-8").splitlines():
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
    if match:
        pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
listing = subprocess.run(
    [sys.argv[2], "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
).stdout
installed = {re.sub(r"[-_.]+", "-", d["name"]).lower(): d["version"] for d in json.loads(listing)}
drift = [
    (name, pins[name], installed.get(name, "absent")) for name in sorted(pins) if installed.get(name) != pins[name]
]
new = sorted(set(installed) - set(pins) - {"pip", "setuptools", "wheel", "torch", "triton", "prefopt"})
print(f"drift from constraints.txt: {len(drift)} changed, {len(new)} new")
for name, old, now in drift:
    print(f"  {name}: {old} -> {now}")
for name in new:
    print(f"  {name}: new, {installed[name]}")

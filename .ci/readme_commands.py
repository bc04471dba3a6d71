"""Print the README's fenced bash commands under '## Two commands', one per line, verbatim (used by .ci/run)."""

import re
import sys
from pathlib import Path

text = Path(sys.argv[1]).read_text(encoding="utf-8")
section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
for block in re.findall(r"```bash\n(.*?)```", section, re.S):
    print(block.strip().replace("\n", " "))

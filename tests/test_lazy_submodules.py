"""After `import prefopt`, every public subpackage and module is an attribute, imported on first access;
`import prefopt` itself stays light, and the command line is never one of them (the library never imports it).

Each check runs in a fresh interpreter: the test session has imported most of prefopt already.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import prefopt

HEAVY = ("transformers", "datasets", "triton", "accelerate", "peft")


def _fresh(code: str) -> object:
    """Run `code` after `import sys, json, prefopt` in a new interpreter; it prints one JSON value."""
    script = f"import sys, json, prefopt\n{code}"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _public_modules() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(prefopt.__path__) if not m.name.startswith("_") and m.name != "cli"
    )


def test_every_public_module_is_a_lazy_attribute_but_the_command_line() -> None:
    names = _public_modules()
    assert {"data", "kernels", "engine", "train", "online", "eval", "compare", "reproduce", "rl", "registry"} <= set(
        names
    )
    got = _fresh(
        f"names = {names!r}\n"
        "before = [n for n in names if f'prefopt.{n}' in sys.modules]\n"
        "heavy = [m for m in " + repr(HEAVY) + " if m in sys.modules]\n"
        "listed = [n for n in names if n in dir(prefopt)]\n"
        "try:\n    prefopt.cli\n    cli = 'an attribute'\nexcept AttributeError as err:\n    cli = str(err)\n"
        "engine = prefopt.engine\n"
        "print(json.dumps({'before': before, 'heavy': heavy, 'listed': listed, 'cli': cli,\n"
        "    'engine': engine is sys.modules['prefopt.engine'] and hasattr(engine, 'LogProbEngine'),\n"
        "    'all': all(getattr(prefopt, n) is sys.modules[f'prefopt.{n}'] for n in names),\n"
        "    'cli_imported': 'prefopt.cli' in sys.modules, 'cli_listed': 'cli' in dir(prefopt)}))"
    )
    assert got["heavy"] == []  # import prefopt loads none of the heavy dependencies
    assert "engine" not in got["before"] and "train" not in got["before"]  # imported on access, not before
    assert got["listed"] == names and got["engine"] is True and got["all"] is True
    assert got["cli"] == "prefopt.cli is the command line, which `import prefopt` leaves out: import it"
    assert got["cli_imported"] is False and got["cli_listed"] is False  # importing every module left it out


def test_unknown_attributes_still_raise() -> None:
    try:
        prefopt.engines  # noqa: B018
    except AttributeError as err:
        assert "no attribute 'engines'" in str(err)
    else:
        raise AssertionError("prefopt.engines resolved")

"""BUILD names every module and test file, so it cannot drift from the tree."""

import os
import re

from conftest import REPO


def python_files(folder):
    found = set()
    for root, _, files in os.walk(os.path.join(REPO, folder)):
        found |= {os.path.relpath(os.path.join(root, f), REPO) for f in files if f.endswith(".py")}
    return found


def test_build_names_every_python_file():
    with open(os.path.join(REPO, "BUILD")) as f:
        named = set(re.findall(r'"([\w/]+\.py)"', f.read()))
    on_disk = (
        python_files("effkeras")
        | python_files("apps")
        | python_files("tools")
        | python_files("tests")
    )
    assert sorted(on_disk - named) == [], "add these to BUILD"
    assert sorted(named - on_disk) == [], "BUILD names files that do not exist"


def test_every_test_file_is_a_py_test():
    with open(os.path.join(REPO, "BUILD")) as f:
        build = f.read()
    for path in python_files("tests"):
        if os.path.basename(path).startswith("test_"):
            assert re.search(rf'py_test\(\s*name = "{os.path.basename(path)[:-3]}"', build), path

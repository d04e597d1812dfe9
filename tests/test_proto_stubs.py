"""The committed stubs in classifier/proto are exactly what the pinned generator makes."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_stubs_match_protos():
    r = subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

#!/usr/bin/env python3
"""Generate the Python stubs in classifier/proto/ from the .proto files here.

    python protos/generate.py            # rewrite classifier/proto/*_pb2*.py
    python protos/generate.py --check    # exit 1 if the committed stubs differ

The stubs are committed so that installing mailsift needs no protoc; CI runs
``--check`` (tests/test_proto_stubs.py) so they cannot drift from the protos. The
generator is pinned (grpcio-tools==1.85.1 in pyproject's test extra) because another
protoc version writes different bytes.

protoc names imports after the proto path (``from mailsift.v1 import x_pb2``), but
the stubs live inside the ``classifier.proto`` package; imports between our own
protos are rewritten to relative ones, as protoletariat does.
"""
import argparse
import filecmp
import pathlib
import re
import shutil
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE.parent / "classifier" / "proto"
IMPORT_RE = re.compile(rb"^from mailsift\.v1 import (\w+_pb2)", re.M)


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    from grpc_tools import protoc  # imported here: only needed to regenerate
    import grpc_tools

    protos = sorted(HERE.glob("mailsift/v1/*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}"]
        args += [str(p.relative_to(HERE)) for p in protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for f in sorted((pathlib.Path(tmp) / "mailsift" / "v1").iterdir()):
            data = IMPORT_RE.sub(rb"from . import \1", f.read_bytes())
            if f.name.endswith("_pb2_grpc.py") and b"def add_" not in data and b"class " not in data:
                continue  # protos without services produce an empty grpc module
            dest = out_dir / f.name
            dest.write_bytes(data)
            written.append(dest)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    a = ap.parse_args(argv)
    if not a.check:
        for p in generate(OUT):
            print("wrote", p.relative_to(HERE.parent))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(pathlib.Path(tmp))
        committed = sorted(p.name for p in OUT.glob("*_pb2*.py*"))
        bad = sorted({p.name for p in fresh} ^ set(committed))
        bad += [p.name for p in fresh if (OUT / p.name).exists() and not filecmp.cmp(p, OUT / p.name, shallow=False)]
        if bad:
            print("stubs out of date, run python protos/generate.py:", ", ".join(sorted(set(bad))))
            return 1
    print("stubs match the protos")
    return 0


if __name__ == "__main__":
    sys.exit(main())

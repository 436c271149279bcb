"""Generate the Python gRPC code in this folder from proto/recommender.proto.

protoc writes ``import recommender_pb2`` in the service module, which only resolves when the output folder
is on sys.path; we rewrite it to an absolute import of this package. ``tests/test_proto.py`` fails when
the committed code differs from what this produces.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROTO_DIR = ROOT / "proto"
OUTPUT_DIR = Path(__file__).resolve().parent
PROTO = "recommender.proto"
GENERATED = ("recommender_pb2.py", "recommender_pb2.pyi", "recommender_pb2_grpc.py")


def generate(output_dir: Path) -> dict[str, str]:
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={output_dir}",
        f"--pyi_out={output_dir}",
        f"--grpc_python_out={output_dir}",
        str(PROTO_DIR / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    out = {}
    for name in GENERATED:
        text = (output_dir / name).read_text()
        text = re.sub(
            r"^import recommender_pb2 as",
            "from cascade.serving.api import recommender_pb2 as",
            text,
            flags=re.MULTILINE,
        )
        out[name] = text
    return out


def generated_in_memory() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        return generate(Path(tmp))


def main() -> None:
    for name, text in generated_in_memory().items():
        (OUTPUT_DIR / name).write_text(text)
        print(f"wrote {OUTPUT_DIR / name}", file=sys.stderr)


if __name__ == "__main__":
    main()

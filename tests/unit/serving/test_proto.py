from __future__ import annotations

from cascade.serving.api import codegen


def test_generated_code_matches_the_proto():
    fresh = codegen.generated_in_memory()
    for name, text in fresh.items():
        committed = (codegen.OUTPUT_DIR / name).read_text()
        assert committed == text, f"cascade/serving/api/{name} is stale: run `make proto`"

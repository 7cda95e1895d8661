"""The demo's foundation step runs and proves its round trips exact."""

import rich.console

from jaxparams.demo import foundation as demo_foundation


def test_foundation_step():
  console = rich.console.Console(record=True, width=120)
  out = demo_foundation.run(console)
  text = console.export_text()
  assert out["exact_safetensors"] and out["exact_orbax"]
  assert out["params"] == 22_713_216  # all-MiniLM-L6-v2 incl. pooler
  assert "A man is eating food." in text

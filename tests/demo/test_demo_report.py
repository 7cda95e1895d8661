"""The demo's report folder: one valid PNG per step present, drawn from the steps' dicts."""

import numpy as np

from jaxparams.demo.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"

RESULTS = {
    "merge": {"accuracy": {"base": {"avg": 0.74}, "expert 0-3": {"avg": 0.6},
                           "linear": {"avg": 0.84}, "ties (density=0.2)": {"avg": 0.745}}},
    "quant": {"sweep": [{"method": "rtn", "bits": b, "mean_cosine": c, "min_cosine": c}
                        for b, c in ((2, 0.3), (3, 0.9), (4, 0.98), (8, 0.9999))]
              + [{"method": "gptq", "bits": 4, "mean_cosine": 0.99, "min_cosine": 0.98}]},
    "prune": {"sweep": [{"setting": "10%", "sparsity": 0.1, "mean_cosine": 0.99,
                         "min_cosine": 0.98, "pattern": False},
                        {"setting": "2:4", "sparsity": 0.5, "mean_cosine": 0.8,
                         "min_cosine": 0.7, "pattern": True}]},
    "edit": {"rows": [{"kind": "prompt", "text": "A B lives in the city of", "p_new_before": 0.0,
                       "p_new_after": 0.9, "p_old_before": 0.99, "p_old_after": 0.05}],
             "edit": {"subject": "A B", "relation": "city", "target_new": "X"}, "old": "Y"},
}


def test_report_writes_one_valid_png_per_step(tmp_path):
  import matplotlib.pyplot as plt
  out = write_report(RESULTS, tmp_path / "report")
  assert sorted(p.name for p in out) == sorted([
      "merge_accuracy.png", "quant_cosine_vs_bits.png", "prune_cosine_vs_sparsity.png",
      "edit_before_after.png"])
  for p in out:
    assert p.read_bytes()[:8] == PNG
    img = plt.imread(p)
    assert img.ndim == 3 and min(img.shape[:2]) >= 250
    assert float(np.std(img[..., :3])) > 0.05, f"{p.name} is blank"


def test_report_skips_steps_not_run(tmp_path):
  out = write_report({"quant": RESULTS["quant"]}, tmp_path)
  assert [p.name for p in out] == ["quant_cosine_vs_bits.png"]

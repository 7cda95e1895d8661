"""Gradients over models with two layer stacks: each stack has its own layer count (mergekit
treats a vision tower and a text model as separate modules)."""

import numpy as np

from jaxparams.io import load_safetensors, save_safetensors
from jaxparams.merge import merge_checkpoints, plan_checkpoints


def _model(path, value):
  t = {f"model.layers.{i}.w": np.full(2, value, np.float32) for i in range(3)}
  t.update({f"vision_model.encoder.layers.{i}.w": np.full(2, value, np.float32)
            for i in range(2)})
  t["lm_head.weight"] = np.full(2, value, np.float32)
  save_safetensors(t, path)


def test_gradient_position_per_layer_stack(tmp_path):
  _model(tmp_path / "base", 0.0)
  _model(tmp_path / "ft", 1.0)
  recipe = {"merge_method": "task_arithmetic", "base_model": str(tmp_path / "base"),
            "models": [{"model": str(tmp_path / "ft"), "parameters": {"weight": [0.0, 1.0]}}]}
  t = {task.name: task.t for task in plan_checkpoints(recipe)}
  assert [t[f"model.layers.{i}.w"] for i in range(3)] == [0.0, 0.5, 1.0]
  assert [t[f"vision_model.encoder.layers.{i}.w"] for i in range(2)] == [0.0, 1.0]
  merge_checkpoints(recipe, tmp_path / "out", progress=False)
  got = load_safetensors(tmp_path / "out")
  np.testing.assert_allclose(got["vision_model.encoder.layers.1.w"], 1.0)
  np.testing.assert_allclose(got["model.layers.1.w"], 0.5)

"""Extract the model weights from a training state (runs/*/last.safetensors) for evaluation.

Usage: python tools/export_train_state.py STATE.safetensors VARIANT OUT.safetensors
"""
import sys

from safetensors.torch import load_file

from ros2_regionfuse.core.weights import save_weights
from ros2_regionfuse.models.registry import build_corrector, build_fusion

state, variant, out = sys.argv[1:4]
model = build_corrector(variant) if variant.startswith('corrector') else build_fusion(variant)
t = load_file(state)
model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith('model.')}, strict=True)
save_weights(model, out, {'variant': variant, 'name': f'{variant}@{out}', 'from_state': state})
print('wrote', out)

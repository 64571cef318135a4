"""The experiment presets (one YAML each), shipped inside the package as ganpaint.configs."""

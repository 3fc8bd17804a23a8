"""Image grids and gallery / session bundles (safetensors + JSON, validated on import)."""

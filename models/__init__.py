"""Shipped models: NAME.json (config, metadata) + NAME.safetensors, with a card NAME.md."""

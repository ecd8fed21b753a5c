"""Command-line tools for users: ``python -m tools.convert_official`` turns the
official Dream Engine release into safetensors files ComfyUI loads."""

"""The base layer: errors, the settings objects (every default and bound), the image data."""

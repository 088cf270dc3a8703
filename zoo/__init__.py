"""Backbones assembled from unifiedops presets and registered with timm (filled by later work)."""

"""The mini UniAD: a tiny UniAD-shaped model trained on generated scenes with the real mmcv 1.x runner."""

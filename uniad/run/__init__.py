"""A pipeline run: its parameters (``params``), the plan preflight makes of them (``plan``), and its UniAD root."""

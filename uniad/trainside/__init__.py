"""Modules that run inside the training interpreter (UniAD's own Python, torch and mmcv 1.x), not in Airflow.

The launcher puts this folder on the training processes' PYTHONPATH and names a module in ``custom_imports``;
each module here needs only torch and mmcv and stays valid Python 3.8 (UniAD main's interpreter).
"""
